"""The built-in demo: the whole REDI method, end to end, on a synthetic task, on CPU."""


def run_demo(out_dir: str, quick: bool = False) -> dict:
    """Return the demo's results (accuracy per method, log-prob trends, paths) after running it in out_dir.

    ``quick`` runs a much smaller version (tiny data, a few steps) used by the tests.
    """
    from redi_megatron.demo.pipeline import DemoSettings, run_pipeline

    return run_pipeline(out_dir, DemoSettings.quick() if quick else DemoSettings())


__all__ = ["run_demo"]

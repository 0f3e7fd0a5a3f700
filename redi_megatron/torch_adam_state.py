"""Megatron's distributed optimizer over torch's Adam: making its saved state load back exactly.

Without Transformer Engine or apex (CPU runs, GPUs without them) megatron-core's
DistributedOptimizer wraps torch's Adam, whose per-parameter 'step' megatron-core 0.16 and 0.19
do not handle on load. Runs with TE/apex use FusedAdam, which keeps no per-parameter step, and
are left alone.
"""

import torch


def prepare_torch_adam(optimizer) -> None:
    """Lets a distributed optimizer over torch's Adam (no TE/apex FusedAdam) load its state exactly.

    Three gaps in megatron-core (0.16 and 0.19 alike) when the inner optimizer is torch's Adam:
    DistributedOptimizer.state_dict() reads 'step' from every parameter's state, which torch's
    Adam creates only at its first step; load_state_dict() restores the step from the param groups
    as ONE tensor shared by every parameter, which torch's Adam then increments once per
    parameter per step (wrong bias correction from the first resumed step on); and the
    parameter-state loads copy a per-parameter 'step' that the fully_reshardable format does not
    carry and the dp_reshardable format does not restore. So an unstepped Adam gets zero state
    (the load overwrites it), and each parameter keeps its own copy of the param groups' step.
    """
    for wrapper in getattr(optimizer, "chained_optimizers", [optimizer]):
        adam = getattr(wrapper, "optimizer", None)
        if not isinstance(adam, (torch.optim.Adam, torch.optim.AdamW)):
            continue
        for group in adam.param_groups:
            for param in group["params"]:
                if not adam.state[param]:
                    adam.state[param] = {"step": torch.tensor(0.0),
                                         "exp_avg": torch.zeros_like(param),
                                         "exp_avg_sq": torch.zeros_like(param)}
        if not getattr(wrapper, "_redi_owns_steps", False):
            wrapper._set_main_param_and_optimizer_states = _with_own_step(wrapper)
            wrapper._redi_owns_steps = True


def _with_own_step(distributed_optimizer):
    """Returns a _set_main_param_and_optimizer_states giving each parameter its own restored step."""
    original = distributed_optimizer._set_main_param_and_optimizer_states

    def set_states(model_param, tensors):
        group, order = distributed_optimizer.model_param_group_index_map[model_param]
        main_param = distributed_optimizer.optimizer.param_groups[group]["params"][order]
        state = distributed_optimizer.optimizer.state[main_param]
        if "step" in state:
            state["step"] = state["step"].detach().clone()
            tensors = dict(tensors, step=state["step"])
        return original(model_param, tensors)

    return set_states

"""A tiny Qwen2 whose answers are known: a bigram chain that writes "</think> The answer is \\boxed{7 or 8}".

Every layer's output projections are zero, so the final hidden state is the current token's
embedding and the untied head scores next tokens by lm_head @ norm(embedding): each chain token
points at its successor with a margin of tens of logits (deterministic at temperature 0.6), except
after "{" where "7" and "8" score exactly the same. Each sample is therefore right with probability
1/2 on a problem whose answer is 7 or 8, and never on others: grading, pass@k and seeds all matter.
"""

import json
from pathlib import Path

from redi_megatron.demo.tiny_model import train_tokenizer

RESPONSE_HEAD = "</think> The answer is \\boxed{"
CORPUS = ["What is 3 plus 4?", "Compute 2 times 4.", RESPONSE_HEAD + "7}", "\\boxed{8}", "<think>\n"]


def write_chain_model(directory: Path) -> Path:
    """Write the tokenizer and the chain model into directory (an HF folder); return it."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from redi_megatron.data.tokenizer_loading import load_tokenizer
    from redi_megatron.evaluation.prompts import PromptBuilder

    vocab = train_tokenizer(CORPUS, directory, 300)
    tokenizer = load_tokenizer(directory)
    start = PromptBuilder(tokenizer).prompt_ids(["x"])[0][-1]
    head, seven, eight, close = tokenizer.encode_batch([RESPONSE_HEAD, "7", "8", "}"])
    chain = [start, *head]
    assert len(set(chain + seven + eight + close)) == len(chain) + 3, "chain tokens must be distinct"
    edges = list(zip(chain, chain[1:])) + [(chain[-1], seven[0]), (chain[-1], eight[0]),
                                           (seven[0], close[0]), (eight[0], close[0]),
                                           (close[0], tokenizer.end_of_turn_id)]
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=96, max_position_embeddings=256,
                         tie_word_embeddings=False, eos_token_id=tokenizer.end_of_turn_id,
                         pad_token_id=tokenizer.pad_id, bos_token_id=None)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embedding = model.model.embed_tokens.weight
        normed = embedding / embedding.pow(2).mean(-1, keepdim=True).sqrt()
        head_weight = torch.zeros_like(model.lm_head.weight)
        for source, target in edges:
            head_weight[target] += 2.0 * normed[source]
        model.lm_head.weight.copy_(head_weight)
    model.save_pretrained(str(directory))
    return directory


def write_benchmarks(directory: Path, alpha: int = 3, beta: int = 2) -> list[Path]:
    """Write two benchmark files and return their paths: alpha's answers cycle 7, 8, 9; beta's 14/2 (LaTeX), 8, 10."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {"alpha": [(f"a{i}", f"What is {i} plus 4?", "789"[i % 3]) for i in range(alpha)],
             "beta": [(f"b{i}", f"Half of {i}4?", ("\\frac{14}{2}", "8", "10")[i % 3]) for i in range(beta)]}
    paths = []
    for name, rows in files.items():
        path = directory / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": f"{name}/{i}", "problem": p, "answer": a, "benchmark": name}) + "\n"
                                for i, p, a in rows), encoding="utf-8")
        paths.append(path)
    return paths

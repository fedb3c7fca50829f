#!/usr/bin/env python3
"""Independent check of `neuroshard export --format hf`.

Loads the exported directory with transformers (AutoTokenizer, AutoModelForCausalLM, as anyone
who downloads the model would), encodes TEXT, and compares with what the node's own model code
computed (`neuroshard logits --text TEXT`, the JSON document in LOGITS.json): the token ids must
be equal, the logits within TOLERANCE (max absolute difference over every position and token).

Usage: hf_export_check.py EXPORT_DIR LOGITS.json TEXT [TOLERANCE]
Prints the measured max abs difference; exits 1 on a mismatch, 2 on a missing dependency.
"""

import json
import sys

try:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
except ImportError as e:
    print(f"{e}: pip install torch transformers", file=sys.stderr)
    sys.exit(2)


def main():
    export_dir, logits_file, text = sys.argv[1:4]
    tolerance = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-3
    with open(logits_file) as f:
        ours = json.load(f)
    torch.set_num_threads(2)
    failures = []

    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if ids != ours["tokens"]:
        failures.append(f"token ids differ:\n  hf:   {ids}\n  ours: {ours['tokens']}")
    if ids != list(text.encode("utf-8")):
        failures.append("the tokenizer does not encode to the text's UTF-8 bytes")
    if tokenizer.decode(ids) != text:
        failures.append(f"decode(encode(text)) = {tokenizer.decode(ids)!r}")
    specials = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    if specials != (256, 257, 258):
        failures.append(f"bos/eos/pad ids are {specials}, not (256, 257, 258)")
    if tokenizer.decode([256] + ids + [257], skip_special_tokens=True) != text:
        failures.append("special tokens are not skipped when decoding")

    model = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32)
    model.eval()
    if type(model).__name__ != "LlamaForCausalLM":
        failures.append(f"loaded as {type(model).__name__}, not LlamaForCausalLM")
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        failures.append("lm_head is not tied to embed_tokens")
    with torch.no_grad():
        hf = model(torch.tensor([ours["tokens"]])).logits[0]
    expected = torch.tensor(ours["logits"], dtype=torch.float32)
    if hf.shape != expected.shape:
        failures.append(f"logits shape {tuple(hf.shape)} vs ours {tuple(expected.shape)}")
        diff = float("inf")
    else:
        diff = (hf - expected).abs().max().item()
    spread = expected.std().item()

    # The check must be able to fail: the same weights with q_proj and k_proj rows permuted as
    # Meta's convert_llama_weights_to_hf.py `permute` does (interleaved RoPE pairs to halves).
    # Exported without it is right for NeuroLLM's half-split RoPE; with it the logits must move.
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads

    def permute(w, heads):
        rows, cols = w.shape
        return w.view(heads, head_dim // 2, 2, cols).transpose(1, 2).reshape(rows, cols)

    with torch.no_grad():
        for layer in model.model.layers:
            attn = layer.self_attn
            attn.q_proj.weight.copy_(permute(attn.q_proj.weight, config.num_attention_heads))
            attn.k_proj.weight.copy_(permute(attn.k_proj.weight, config.num_key_value_heads))
        permuted = (model(torch.tensor([ours["tokens"]])).logits[0] - expected).abs().max().item()
    if not permuted > 10 * tolerance:
        failures.append(
            f"with q/k rows permuted the logits moved only {permuted:.3e}: the comparison "
            "cannot tell RoPE conventions apart on these weights"
        )
    print(
        f"transformers {transformers.__version__}, torch {torch.__version__}: "
        f"{len(ids)} positions x {expected.shape[-1]} logits, max abs difference {diff:.3e} "
        f"(tolerance {tolerance:g}; logits' std {spread:.3f}; {permuted:.3e} with q/k rows "
        "permuted for interleaved RoPE)"
    )
    if not diff < tolerance:
        failures.append(f"max abs logit difference {diff:.3e} >= {tolerance:g}")
    for failure in failures:
        print("MISMATCH:", failure, file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

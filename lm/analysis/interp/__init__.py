"""Look inside a trained model through its hook points (TransformerLens style).

- ``tokens``: prompts, single-token targets, repeated random sequences, readable labels;
- ``lens``: the logit lens (each layer's residual stream read through ``ln_f`` and the
  unembedding);
- ``patching``: activation patching from a clean into a corrupted prompt;
- ``attribution``: direct logit attribution of each head, MLP and embedding;
- ``heads``: previous-token, duplicate-token and induction scores of every head;
- ``plots``: the figures ``lm analyze`` writes.

Every function takes a ``GPT`` (any architecture option, LoRA-adapted or converted) and
reads activations with ``GPT.run_with_cache`` or edits them with ``GPT.hooks``: nothing
re-implements the forward pass. Checked against TransformerLens's ``HookedTransformer``
and ``ActivationCache`` (tests/analysis/interp/test_transformer_lens.py).
"""

"""Moving models between Hugging Face families and forgather's causal LM (`forgather convert`).

`registry` holds the converters by name (a project registers its own with `register`), `llama`
the built-in Llama/Mistral one, and `convert` the command's work: load, map, verify the logits,
save.
"""

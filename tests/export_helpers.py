"""A base model of another shape, saved to disk (for the 'adapter from another base model' check)."""

from tiny import tiny_bert


def other_base(path):
    tiny_bert().save_pretrained(path)
    from transformers import AutoTokenizer  # noqa: F401 - the folder needs no tokenizer for this check

    return path

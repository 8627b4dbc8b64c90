"""The ground floor: what every other part of XLab uses and which imports nothing of XLab above it.

    errors.py               XLabError, the one-line error and how scripts exit with it
    files.py                writing aside, then renaming into place
    checkpoint.py           reading Lightning checkpoints without running pickled code; their records
    export_format.py        the export folder's file names, version and config reader
    tokenizer.py            the sentencepiece tokenizer, special tokens, IGNORE_INDEX
    pretrained_tokenizer.py a pretrained Hugging Face tokenizer with the same interface
"""

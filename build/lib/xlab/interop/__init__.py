"""Interop: XLab's own export format and Hugging Face `transformers` folders, in both directions.

    export.py       export-checkpoint, and `load`: the one loader of checkpoints and exports
    describe.py     facts about a checkpoint or export without building the model (`manage.py inspect`)
    export_hf.py    an XLab model as a transformers folder (the model says how: `LanguageModel.hf_export`)
    import_hf.py    a transformers GPT-2 folder as an XLab export
    hf_gpt2.py      GPT-2 folders: reading them, and their weights as an XLabModel
    spm_to_hf.py    XLab's sentencepiece model as a fast tokenizer with the same ids
"""

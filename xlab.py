#!/usr/bin/env python3
"""Train, evaluate and score XLab language models (LightningCLI).

    ./xlab.py fit                               # conf/defaults.yaml: tiny model, embedded corpus, CPU
    ./xlab.py fit -c conf/wikitext2.yaml        # a recipe; override any key: --model.init_args.n_layer 6
    ./xlab.py validate --ckpt_path CKPT         # loss, accuracy, perplexity, bits per byte
    ./xlab.py test --ckpt_path CKPT
    ./xlab.py predict --ckpt_path CKPT          # per-document scores of the predict split (JSON lines)
    ./xlab.py fit --print_config                # the full configuration, every key
"""

from xlab.cli import main

if __name__ == "__main__":
    main()

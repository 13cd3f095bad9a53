# Sourced by scripts/setup, test, run and bench: the torch stack that DVN_STACK names.
#   torch2.14 (default)  torch 2.14.1 + torchvision 0.29.1 (triton 3.8 comes with it), in .venv
#   torch2.11            torch 2.11.0 + torchvision 0.26.0 + triton 3.6.0 on Python 3.12, in
#                        .venv-torch2.11: the software of the lent GPU machine's image
# CI (.ci/run) tests both. Sets STACK, VENV, STACK_PYTHON (the interpreter that makes the venv)
# and STACK_PINS (what pip installs besides the common tools).
STACK="${DVN_STACK:-torch2.14}"
case "$STACK" in
  torch2.14)
    VENV=.venv
    STACK_PYTHON="${PYTHON:-python3}"
    STACK_PINS=(torch==2.14.1 torchvision==0.29.1 numpy) ;;
  torch2.11)
    VENV=.venv-torch2.11
    # Python 3.12 as on the GPU image; pyenv's when python3.12 is not on PATH.
    STACK_PYTHON="${PYTHON:-}"
    if [ -z "$STACK_PYTHON" ]; then
      for p in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
        if "$p" -c '' 2>/dev/null; then STACK_PYTHON=$p; break; fi
      done
    fi
    if [ -z "$STACK_PYTHON" ]; then
      echo "note: Python 3.12 not found; the torch2.11 stack uses python3" >&2
      STACK_PYTHON=python3
    fi
    # numpy < 2.4: triton 3.6's interpreter fails on runtime loop bounds with numpy 2.4.
    STACK_PINS=(torch==2.11.0 torchvision==0.26.0 triton==3.6.0 numpy==2.3.5) ;;
  *)
    echo "DVN_STACK: unknown stack '$STACK'; choose torch2.14 (the default) or torch2.11" >&2
    exit 2 ;;
esac

#!/usr/bin/env bash
# The README's test command, and the one .ci/run calls: sets up what the tests need when it is
# missing, then runs `cargo test` (arguments are passed on: ./test.sh --test node).
# - Chromium and chromedriver (tests/dashboard.rs drives the dashboard in a headless browser) and
#   python3 with venv support: installed with apt-get when run as root or with passwordless sudo;
#   otherwise it stops and prints the one command that installs them.
# - The Python tools, in a virtual environment under the build directory (nothing is installed
#   into the system's Python): ecdsa re-verifies the ledger's signatures independently
#   (tests/ledger_crosscheck.rs), schemathesis checks the API against its OpenAPI document
#   (tests/api_schema.rs), selenium drives the browser (tests/dashboard.rs), torch and
#   transformers load an exported model (tests/export.rs).
set -euo pipefail
cd "$(dirname "$0")"

command -v cargo >/dev/null || { echo "test.sh: cargo is missing: install Rust from https://rustup.rs" >&2; exit 1; }
venv="${CARGO_TARGET_DIR:-$PWD/target}/test-tools/venv"

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if ! command -v python3 >/dev/null; then
    missing+=(python3 python3-venv)
elif [ ! -x "$venv/bin/python3" ] && ! python3 -c 'import ensurepip' 2>/dev/null; then
    # Debian's python3 creates virtual environments only with python3-venv (it holds ensurepip).
    missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        sudo=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    else
        echo "test.sh: the tests need ${missing[*]}; install them with:" >&2
        echo "    sudo apt-get install -y ${missing[*]}" >&2
        echo "then run ./test.sh again." >&2
        exit 1
    fi
    echo "test.sh: installing ${missing[*]} with apt-get" >&2
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/python3" ]; then
    echo "test.sh: creating the Python environment of the tests in $venv" >&2
    python3 -m venv "$venv"
fi
# schemathesis 4: tests/api_schema.rs uses its v4 command line.
if ! "$venv/bin/python3" -c 'import ecdsa, selenium, schemathesis' 2>/dev/null; then
    echo "test.sh: installing ecdsa, schemathesis and selenium into $venv" >&2
    "$venv/bin/python3" -m pip install --quiet --no-cache-dir --disable-pip-version-check \
        'ecdsa>=0.19,<1' 'schemathesis>=4,<5' 'selenium>=4,<5'
fi

# torch and transformers: tests/export.rs loads an exported model with AutoModelForCausalLM. The
# registry's torch is the CUDA build (it imports only with its CUDA runtime packages, about 5.6 GB
# and 3-4 minutes to install here; it then runs on the CPU): no CPU-only wheel is reachable.
if ! "$venv/bin/python3" -c 'import torch, transformers' 2>/dev/null; then
    echo "test.sh: installing torch and transformers into $venv (several GB, a few minutes)" >&2
    "$venv/bin/python3" -m pip install --quiet --no-cache-dir --disable-pip-version-check \
        'torch>=2,<3' 'transformers>=4.56,<6'
fi

# The tests run `python3` and `schemathesis` from PATH: the environment's come first.
export PATH="$venv/bin:$PATH"
exec cargo test "$@"

#!/usr/bin/env bash
# Print the path of a working Python 3.10 interpreter, or explain how to get one and fail.
# Looks on PATH first, then in pyenv's versions (the pyenv shim fails when 3.10 is not the
# global version), then in the usual install prefixes.
set -u
candidates=(python3.10)
root=$( (command -v pyenv >/dev/null && pyenv root) 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
for dir in "$root"/versions/3.10*/bin; do [ -x "$dir/python3.10" ] && candidates+=("$dir/python3.10"); done
candidates+=(/usr/local/bin/python3.10 /usr/bin/python3.10 /opt/python3.10/bin/python3.10)
for cand in "${candidates[@]}"; do
  if out=$("$cand" -c 'import sys; print(sys.version_info[:2] == (3, 10))' 2>/dev/null) && [ "$out" = True ]; then
    command -v "$cand" 2>/dev/null || echo "$cand"
    exit 0
  fi
done
cat >&2 <<'MSG'
error: no Python 3.10 found (paddlespeech-ctcdecoders publishes wheels for Python <= 3.10 only).
Install one, then run make again, e.g.:
  pyenv install 3.10.13                  # with pyenv
  apt-get install python3.10 python3.10-venv   # on a distribution that packages it
  conda create -n asr python=3.10        # with conda (then: make PYTHON=$(which python))
Or point the Makefile at one: make setup PYTHON=/path/to/python3.10
MSG
exit 1

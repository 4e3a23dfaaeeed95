# Sourced by scripts/demo, scripts/test and scripts/bench: make .venv if missing, install
# the project when pyproject.toml changed since the last install. Needs only Python 3.11+.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python="$candidate"; break; fi
  done
fi
[[ -n "$python" ]] || { echo "scripts: no python3 found; install Python 3.11 or newer" >&2; exit 2; }
if [[ ! -x .venv/bin/python ]]; then
  echo "scripts: creating .venv with $("$python" --version)" >&2
  "$python" -m venv .venv
fi
stamp=".venv/.fedtrace-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "scripts: installing fedtrace and its dependencies into .venv" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
  .venv/bin/python -m pip install --quiet -e '.[test]'
  echo "$want" > "$stamp"
fi

"""Peak memory and time of `load_corpus` on a large synthetic corpus (default ~100 MB).

Writes the corpus into a temp folder, then runs each phase in a fresh subprocess so
ru_maxrss is that phase's own peak. Usage: python bench/data_memory.py [--mb 100]
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# mostly ASCII like real text, with 2-, 3- and 4-byte UTF-8 characters mixed in
SAMPLE = """
the and of to a in that is was he for it with as his on be at by I had not are but from
or have an they which one you were her all she there would their we him been
café naïve résumé Æsir Ørsted — “quoted” ‘single’ … 中文 日本語 한국어 Ωμέγα Привет
😀 🎉 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∑ ∞ ≠
"""
WORDS = SAMPLE.split()

# what each phase runs, after `from charlstm.data import load_corpus` is timed apart
PHASES = {
    "import only": "pass",
    "first load (2 passes, writes cache)": "c = load_corpus([path], cache)",
    "cached load": "c = load_corpus([path], cache); assert c.cached",
    # max() reads every page of the memmap without making a copy of the array
    "cached load + read every token": "c = load_corpus([path], cache); c.tokens.max()",
}

CHILD = """
import resource, sys, time
from pathlib import Path
import numpy as np
from charlstm.data import load_corpus
path, cache = Path(sys.argv[1]), Path(sys.argv[2])
t0 = time.perf_counter()
{code}
seconds = time.perf_counter() - t0
print(seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
"""


def write_corpus(path: Path, megabytes: int) -> None:
    """Random words in lines, written block by block so this script stays small too."""
    rng = np.random.default_rng(0)
    words = np.array(WORDS)
    target = megabytes * 1_000_000
    written = 0
    with open(path, "wb") as f:
        while written < target:
            picks = words[rng.integers(0, len(words), size=100_000)]  # (100000,)
            lines = picks.reshape(-1, 10)  # ten words a line
            block = ("\n".join(" ".join(line) for line in lines) + "\n").encode()
            written += f.write(block)


def run_phase(code: str, path: Path, cache: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one phase in a fresh interpreter."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(code=code), str(path), str(cache)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return float(out[0]), int(out[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="corpus size in MB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path, cache = Path(tmp) / "corpus.txt", Path(tmp) / "cache"
        write_corpus(path, args.mb)
        size = path.stat().st_size
        print(f"corpus: {size / 1e6:.1f} MB, {len(WORDS)} word types, non-ASCII mixed in")
        print(f"{'phase':<38} {'seconds':>8} {'peak RSS MiB':>13}")
        for name, code in PHASES.items():
            seconds, rss = run_phase(code, path, cache)
            print(f"{name:<38} {seconds:>8.3f} {rss:>13.1f}")


if __name__ == "__main__":
    main()

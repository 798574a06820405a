"""The toolkit's library. Importing it sets CPU thread variables before Paddle loads.

- MKL_DEBUG_CPU_TYPE=5 (AMD only): Paddle's bundled MKL 2019 takes a slow code path on AMD CPUs;
  this makes it use its AVX2 kernels (about 2.5x faster matmul on the EPYC we measured).
- OMP_NUM_THREADS: Paddle forces 1 thread when it is unset; we use the cores this
  process may run on, shared among the local training processes. Loader workers do
  no Paddle work, so forking them after Paddle's OpenMP pool exists is safe.
- KMP_BLOCKTIME=1: waiting OpenMP threads sleep after 1 ms, not 200 (utils/placement.py).
- FLAGS_use_stride_kernel=0: Paddle's transpose copies instead of returning a strided view.
All are only defaults: a value already in the environment wins.
"""
import os as _os


def local_processes() -> int:
    """Training processes on this machine (paddle.distributed.launch sets PADDLE_LOCAL_SIZE)."""
    for name in ("PADDLE_LOCAL_SIZE", "PADDLE_TRAINERS_NUM"):
        if _os.environ.get(name, "").isdigit():
            return max(1, int(_os.environ[name]))
    return 1


def _default_threads() -> int:
    try:
        cores = len(_os.sched_getaffinity(0))
    except AttributeError:
        cores = _os.cpu_count() or 1
    return max(1, cores // local_processes())


def _is_amd() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return "AuthenticAMD" in handle.read(4096)
    except OSError:
        return False


if _is_amd():  # on Intel CPUs the variable makes MKL slower (bench: 153 -> 80 GFLOP/s)
    _os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
# numpy's OpenBLAS would otherwise take OMP_NUM_THREADS threads that spin beside Paddle's
# (bench: fbank of a batch 126 ms -> 17.5 ms, 8 s inference 113 -> 59 ms with one thread).
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
_os.environ.setdefault("OMP_NUM_THREADS", str(_default_threads()))
# Paddle's Intel OpenMP threads spin 200 ms waiting for work; after 1 ms they sleep and leave the
# core to a loader worker (utils/placement.py). The step itself runs as fast (make bench).
_os.environ.setdefault("KMP_BLOCKTIME", "1")
# Paddle 3 returns a strided view from transpose; the next op that needs dense memory then goes
# through Paddle's element-by-element strided copy: 5.7 ms for the features' [16, 300, 80] batch
# turned [B, 1, D, T] for the convolutions, against 0.66 for its transpose kernel. With Paddle's CPU
# kernels the peer config's step takes 156-161 ms instead of 170-171; ours transpose the features
# in their own op (make bench: the `strided_views` lever).
_os.environ.setdefault("FLAGS_use_stride_kernel", "0")

import warnings as _warnings

# Paddle warns about ccache, a compiler cache for C++ extensions, which our kernels (built once) do not
# need; utils/cpu_kernels.py filters it again where Paddle has reset the filters.
_warnings.filterwarnings("ignore", message="No ccache found")

import importlib.abc as _importlib_abc  # noqa: E402
import importlib.util as _importlib_util  # noqa: E402
import sys as _sys  # noqa: E402

# Paddle's import prints "WARNING: OMP_NUM_THREADS set to N, not 1 ... PLEASE USE OMP_NUM_THREADS WISELY"
# whenever the variable is above 1, which is what we set on purpose (above); the two lines are dropped.
PADDLE_THREAD_WARNINGS = ("WARNING: OMP_NUM_THREADS set to", "PLEASE USE OMP_NUM_THREADS WISELY")


class _DroppingStderr:
    """sys.stderr without the lines that start with one of `prefixes` (print writes the line end apart)."""

    def __init__(self, stream, prefixes):
        self.stream, self.prefixes, self.dropped_last = stream, prefixes, False

    def write(self, text):
        if text.startswith(self.prefixes) or (self.dropped_last and text == "\n"):
            self.dropped_last = not self.dropped_last if text == "\n" else True
            return len(text)
        self.dropped_last = False
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


class _Discard:
    def write(self, text):
        return len(text)

    def flush(self):
        pass


class _QuietPaddleImport(_importlib_abc.MetaPathFinder):
    """Runs the import of the `paddle` package with PADDLE_THREAD_WARNINGS dropped from sys.stderr.
    It stays in sys.meta_path until that import runs (a find_spec("paddle") that only asks whether
    Paddle is installed does not use it up)."""

    looking = False  # inside our own find_spec("paddle"): let the other finders answer

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "paddle" or self.looking:
            return None
        self.looking = True
        try:
            spec = _importlib_util.find_spec("paddle")
        finally:
            self.looking = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        real_exec, finder = spec.loader.exec_module, self

        def exec_module(module):
            if finder in _sys.meta_path:  # the import runs now: once is enough
                _sys.meta_path.remove(finder)
            # where stderr is None (pythonw, 2>&-), print(file=None) would write Paddle's lines to stdout
            stderr = _sys.stderr
            _sys.stderr = _DroppingStderr(stderr if stderr is not None else _Discard(), PADDLE_THREAD_WARNINGS)
            try:
                real_exec(module)
            finally:
                _sys.stderr = stderr
        spec.loader.exec_module = exec_module
        return spec


if "paddle" not in _sys.modules:
    _sys.meta_path.insert(0, _QuietPaddleImport())

"""Shared by the plot scripts: matplotlib from whichever interpreter has it.

The CLI runs the plot scripts with plain `python3`. If that interpreter lacks
matplotlib, the calling script runs itself again with the system interpreter
(/usr/bin/python3, where Debian's python3-matplotlib lives), so it works from any
environment.
"""

import io
import os
import sys
import tempfile

kSystemPython = "/usr/bin/python3"


def import_pyplot(script):
    """Returns matplotlib.pyplot (Agg backend), or re-executes `script` elsewhere."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        pass
    here = os.path.realpath(sys.executable)
    if os.path.exists(kSystemPython) and os.path.realpath(kSystemPython) != here:
        if os.environ.get("SPILLWAY_PLOT_REEXEC") != "1":
            os.environ["SPILLWAY_PLOT_REEXEC"] = "1"
            os.execv(kSystemPython, [kSystemPython, os.path.abspath(script)] + sys.argv[1:])
    sys.exit(
        "%s: matplotlib is not installed for %s (nor for %s); install python3-matplotlib"
        % (os.path.basename(script), sys.executable, kSystemPython)
    )


def save_figure(fig, path, **kwargs):
    """fig.savefig(path) through a temporary file in the same folder, renamed over `path`:
    a kill mid-write leaves the old plot or the new one, never half a PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format=kwargs.pop("format", "png"), **kwargs)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask

"""enrgdaq core: the library every `daq` command is built on.

Nothing here imports typer or rich (except `render`, used only by the CLI), and nothing
imports pyarrow, uproot or h5py at module load: they are imported where a table is touched.
"""

__version__ = "0.1.0"

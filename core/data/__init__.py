"""Data: from a source (built-in, folder, zip, Kaggle) to a checked, split index of images.

``sources`` resolves a source to a folder, ``archives`` extracts zips safely, ``layout`` finds
class folders and their files, ``index`` checks and splits them into a ``DatasetIndex``;
``images`` reads one image, ``scan_cache`` remembers verdicts, ``pipeline`` feeds tf.data,
``health`` reports problems and ``builtin`` makes the offline datasets.
"""

# Imported with the package: it registers the repair that ``resolve_source`` runs on a managed
# dataset before its folder is read (so any process that reads data has it).
import core.data.datasets  # noqa: F401
from core.data.archives import MAX_ZIP_MEMBERS, ZIP_MARKER_NAME, extract_zip
from core.data.index import DatasetIndex, load_dataset
from core.data.layout import unsafe_name_characters
from core.data.sources import parse_source, resolve_source

__all__ = [
    "MAX_ZIP_MEMBERS",
    "ZIP_MARKER_NAME",
    "DatasetIndex",
    "extract_zip",
    "load_dataset",
    "parse_source",
    "resolve_source",
    "unsafe_name_characters",
]

"""Job types described for people: their keys, types and defaults, and starter TOML files.

Internal: the design is that `daq job list` and `daq job new` read a job type from its own
`Config` struct, so a new type needs no description beyond its class.
"""

from __future__ import annotations

from typing import Any

import msgspec
import msgspec.inspect as mi

from enrgdaq_core.config import _describe
from enrgdaq_core.jobs.base import Job

_LEGACY = {"remote_config", "daq_job_unique_id"}  # accepted for seed configs, not advertised


def describe(cls: type[Job]) -> dict[str, Any]:
    """A job type as plain data: description, aliases, and each key's type and default."""
    info = mi.type_info(cls.Config)
    assert isinstance(info, mi.StructType)
    keys = {}
    for f in info.fields:
        if f.encode_name in _LEGACY:
            continue
        default = f.default if f.default is not mi.NODEFAULT else None
        if f.default_factory is not mi.NODEFAULT:
            default = msgspec.to_builtins(f.default_factory())
        keys[f.encode_name] = {
            "type": _describe(f.type),
            "default": msgspec.to_builtins(default),
            "required": f.required,
        }
    return {"description": cls.description, "aliases": list(cls.aliases), "keys": keys}


def starter_toml(cls: type[Job], type_name: str) -> str:
    """A config file for `cls` with every key at its default (`daq job new`)."""
    import tomli_w

    config = cls.Config(daq_job_type=type_name)
    data = {k: v for k, v in msgspec.to_builtins(config).items() if k not in _LEGACY}
    data.pop("store_config", None)
    data = {k: v for k, v in data.items() if v is not None}
    body = tomli_w.dumps(data)
    hint = (
        "\n# Where stores put this source's data (uncomment the backends you want):\n"
        "# [store_config.csv]\n"
        f'# file_path = "{type_name}.csv"\n'
        "# add_date = true\n"
        "# [store_config.root]\n"
        f'# file_path = "{type_name}.root"\n'
    )
    return f"# {cls.description}\n" + body + hint

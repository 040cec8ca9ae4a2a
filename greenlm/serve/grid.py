"""The grid signals moved to `greenlm.grid` (serve, the gateway and deferred work all read them). This name
stays only for serve/policy_file.py's import of `MAX_INTENSITY_G_PER_KWH`, which another change rewrites;
delete this file once that import reads `greenlm.grid.reading`."""

from greenlm.grid.reading import MAX_INTENSITY_G_PER_KWH

__all__ = ["MAX_INTENSITY_G_PER_KWH"]

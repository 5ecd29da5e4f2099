"""`securemail.__all__` is explicit, sorted, and every name exists."""

from __future__ import annotations

import securemail


def test_all_is_sorted_and_complete() -> None:
    names = securemail.__all__
    assert names == sorted(names)
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(securemail, name), name
    public = {n for n in vars(securemail) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(securemail, n)).__name__ == "module"}
    assert public - modules - {"annotations"} == set(names)


def test_interface_names() -> None:
    assert callable(securemail.load)
    assert issubclass(securemail.Blocked, securemail.SecuremailError)
    assert issubclass(securemail.TemporaryFailure, securemail.SecuremailError)
    assert securemail.TemporaryFailure.smtp_reply.startswith("451 4.3.0")

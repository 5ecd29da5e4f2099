"""Spanish health terms (trial 42: a Spanish diagnosis with a date of birth left in clear)."""

from __future__ import annotations

import pytest

from securemail.config import PolicySettings
from securemail.phi import Detectors

DET = Detectors(PolicySettings())


def kinds(body: str) -> set[str]:
    return {s.detector for s in DET.scan("Seguimiento", body)}


@pytest.mark.parametrize("body", [
    "Paciente DOB 03/14/1985. Diagnóstico: trastorno depresivo mayor.",
    "DOB 03/14/1985 - ideacion suicida, inicia sertralina",  # written without accents
    "Fecha de nacimiento: DOB 3/14/85. Síntomas de ansiedad desde marzo.",
])
def test_spanish_health_terms_with_an_identifier_are_phi(body: str) -> None:
    assert {"phi-dob", "phi-keyword"} <= kinds(body)


def test_spanish_office_talk_is_not_a_health_term() -> None:
    assert "phi-keyword" not in kinds("La reunión del martes: traigan el presupuesto. "
                                      "DOB 03/14/1985")

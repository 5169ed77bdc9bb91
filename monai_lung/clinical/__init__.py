"""Clinical reporting of findings: what a lung-screening programme acts on. Research use only.

- :mod:`.composition`: nodule type (solid, part-solid, non-solid) and calcification from the CT around a finding;
- :mod:`.measures`: sizes as Lung-RADS measures them (mean diameter to one decimal, volume);
- :mod:`.location`: lung side, zone (upper, middle, lower third) and pleural contact from the lung mask;
- :mod:`.lungrads`: the Lung-RADS v2022 category per finding and per exam, from the table in ``lungrads_v2022.json``;
- :mod:`.registration`, :mod:`.followup`: a scan compared with the patient's prior CT (``monai-lung followup``).

This package sits above detection, io and transforms; nothing below imports it.
"""

from monai_lung.findings.steps import register_step


def _describe_step(scan, image: str) -> None:
    """``monai-lung detect``'s step: the clinical attributes of the findings at the operating point."""
    from monai_lung.clinical.findings import describe_scan

    describe_scan(scan, image)


register_step("clinical", _describe_step)

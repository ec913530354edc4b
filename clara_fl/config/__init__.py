"""The config engine: an MMAR's configs read, translated, checked and built, without importing upward.

Variables (:mod:`.variables`), name lookup (:mod:`.locator`), references and building (:mod:`.resolver`),
config code (:mod:`.expressions`, :mod:`.safe_code`), the restricted policy (:mod:`.restrictions`,
:mod:`.policy`), Clara 4.0 and legacy-MONAI translation (:mod:`.legacy`, :mod:`.clara40`, :mod:`.compat`) and
one-line errors (:mod:`.errors`).
"""

"""The report's language: English (the source language) or Korean, chosen per call.

Every sentence a reader sees (the PDF, its figures, the version's description block) goes
through ``_()`` / ``ngettext()`` here, which read the language of the current context
(:func:`use_language`, a ``contextvars.ContextVar``): one process may render a report in
English and then one in Korean, and nothing is installed globally. Messages that are defined
before any language is chosen (tables of titles and captions) are marked with ``N_()`` and
translated where they are shown.

The catalogs are GNU gettext files kept with Babel: ``heimer_mlflow/locale/heimer.pot`` (extracted
from the code and the template, see README "Translations"), ``locale/ko/LC_MESSAGES/heimer.po``
(the Korean text) and its compiled ``heimer.mo``, which the build compiles (``hatch_build.py``,
at ``pip install`` and ``pip install -e``).

Korean needs a font with Hangul: the Debian package ``fonts-nanum`` (NanumGothic), found by its
file name in the font folders (``HEIMER_FONT_DIRS``, else the system's), never downloaded.
"""

from __future__ import annotations

import contextlib
import contextvars
import gettext as _gettext
import logging
import os
from functools import lru_cache
from pathlib import Path

from .errors import HeimerError

DOMAIN = "heimer"
SOURCE_LANGUAGE = "en"
LANGUAGES = ("en", "ko")
LOCALE_DIR = Path(__file__).parent / "locale"
# Hangul for WeasyPrint and matplotlib: NanumGothic from Debian's fonts-nanum
FONT_PACKAGE = "fonts-nanum"
FONT_FAMILY = "NanumGothic"
FONT_FILES = ("NanumGothic.ttf", "NanumGothicBold.ttf")
FONT_DIRS_ENV = "HEIMER_FONT_DIRS"  # os.pathsep-separated folders searched instead of the system's
SYSTEM_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")
# the languages that need the Hangul font
NEEDS_FONT = {"ko"}

_language: contextvars.ContextVar[str] = contextvars.ContextVar("heimer_language", default=SOURCE_LANGUAGE)


def check_language(lang) -> str:
    """``lang`` if it is a language the report speaks; else a HeimerError in one line."""
    if lang is None:
        return SOURCE_LANGUAGE
    if not isinstance(lang, str) or lang.strip().lower() not in LANGUAGES:
        raise HeimerError(f"lang={lang!r}: use one of {', '.join(LANGUAGES)} (en: English, ko: Korean)")
    return lang.strip().lower()


def current_language() -> str:
    return _language.get()


@contextlib.contextmanager
def use_language(lang: str | None):
    """Within the block, ``_()`` and the report speak ``lang`` (en or ko)."""
    token = _language.set(check_language(lang))
    try:
        yield
    finally:
        _language.reset(token)


class CatalogMissing(HeimerError):
    """The compiled catalog of a language is not installed."""


@lru_cache(maxsize=None)
def translations(lang: str):
    if lang == SOURCE_LANGUAGE:
        return _gettext.NullTranslations()
    mo = catalog_path(lang)
    if not mo.is_file():
        raise CatalogMissing(f"the {lang} message catalog {mo} is not compiled: reinstall heimer-mlflow "
                             "(pip install -e . compiles it), or run: pybabel compile -D heimer -d heimer_mlflow/locale")
    with mo.open("rb") as handle:
        return _gettext.GNUTranslations(handle)


def catalog_path(lang: str) -> Path:
    return LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.mo"


def reload_catalogs() -> None:
    """Forget the loaded catalogs (after a compile, in tests)."""
    translations.cache_clear()


def _(message: str) -> str:
    """``message`` in the current language."""
    return translations(_language.get()).gettext(message)


def gettext(message: str) -> str:
    return _(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return translations(_language.get()).ngettext(singular, plural, n)


def pgettext(context: str, message: str) -> str:
    """``message`` in the current language, told apart from the same English words elsewhere by ``context``."""
    return translations(_language.get()).pgettext(context, message)


def N_(message: str) -> str:
    """Marks ``message`` for the catalog without translating it (translated where it is shown)."""
    return message


def translate(message: str | None) -> str | None:
    """``_(message)`` for a message kept untranslated (``N_``), passing None and '' through."""
    return _(message) if message else message


# --------------------------------------------------------------------------------------------
# Fonts
# --------------------------------------------------------------------------------------------


def font_dirs() -> list[Path]:
    given = os.environ.get(FONT_DIRS_ENV)
    dirs = given.split(os.pathsep) if given is not None else SYSTEM_FONT_DIRS
    return [Path(d).expanduser() for d in dirs if d]


def find_font(name: str) -> Path | None:
    """The font file ``name`` in the font folders (searched recursively), or None."""
    for folder in font_dirs():
        if folder.is_dir():
            found = next(iter(sorted(folder.rglob(name))), None)
            if found is not None and found.is_file():
                return found
    return None


def hangul_fonts() -> list[Path]:
    """NanumGothic's regular and bold files; a HeimerError naming the package when absent."""
    found = [find_font(name) for name in FONT_FILES]
    if found[0] is None:
        where = ", ".join(str(d) for d in font_dirs())
        raise HeimerError(f"lang=ko needs a font with Hangul: install the Debian package {FONT_PACKAGE} "
                          f"(sudo apt-get install {FONT_PACKAGE}); {FONT_FILES[0]} was not found in {where}")
    return [path for path in found if path is not None]


def require_fonts(lang: str) -> None:
    """Stop before any compute when ``lang`` needs a font that is not installed."""
    if check_language(lang) in NEEDS_FONT:
        hangul_fonts()


def line_spacing() -> float:
    """matplotlib's spacing of multi-line text for the current language: it spaces lines by the
    height of "lp", and Hangul stands taller than Latin letters, so Korean lines need more."""
    return 1.7 if current_language() in NEEDS_FONT else 1.2  # 1.2: matplotlib's default


@contextlib.contextmanager
def figure_fonts():
    """matplotlib's fonts for the current language: NanumGothic first for Korean (registered
    from its file), DejaVu Sans after it for the signs Nanum lacks; nothing changes for English."""
    import matplotlib

    if current_language() not in NEEDS_FONT:
        yield
        return
    from matplotlib import font_manager

    for path in hangul_fonts():
        if str(path) not in {f.fname for f in font_manager.fontManager.ttflist}:
            font_manager.fontManager.addfont(str(path))
    # NanumGothicBold.ttf declares weight 600, so matplotlib says it found no "bold" and uses 600:
    # which is that very file. A note about the font's table, not about the figure.
    quiet = _WeightNoteFilter()
    logging.getLogger("matplotlib.font_manager").addFilter(quiet)
    try:
        with matplotlib.rc_context({"font.family": [FONT_FAMILY, "DejaVu Sans"]}):  # per-glyph fallback
            yield
    finally:
        logging.getLogger("matplotlib.font_manager").removeFilter(quiet)


class _WeightNoteFilter(logging.Filter):
    def filter(self, record):
        return "Failed to find font weight" not in str(record.msg)

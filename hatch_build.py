"""Build hook: compiles the message catalogs (heimer_mlflow/locale/*/LC_MESSAGES/heimer.po) into the
``heimer.mo`` files gettext reads, at every build: ``pip install .`` (the wheel carries them) and
``pip install -e .`` (written beside the .po in the source tree, which the editable install imports).
The .mo files are build outputs (git ignores them); tests/test_i18n.py fails when one is missing
or older than its .po."""

from __future__ import annotations

from pathlib import Path

try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # imported outside a build (tests/test_i18n.py compiles in memory with compile_catalog)
    BuildHookInterface = object


def compile_catalog(po: Path) -> bytes:
    """The .mo bytes of one .po file (Babel; fuzzy entries left out, as gettext would)."""
    import io

    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with po.open("rb") as handle:
        catalog = read_po(handle, locale=po.parent.parent.name, domain="heimer")
    out = io.BytesIO()
    write_mo(out, catalog, use_fuzzy=False)
    return out.getvalue()


def compile_catalogs(root: Path) -> list[Path]:
    """Compile every ``heimer.po`` under ``root/heimer_mlflow/locale``; returns the .mo files."""
    written = []
    for po in sorted((root / "heimer_mlflow" / "locale").glob("*/LC_MESSAGES/heimer.po")):
        mo = po.with_suffix(".mo")
        data = compile_catalog(po)
        if not mo.is_file() or mo.read_bytes() != data:
            mo.write_bytes(data)
        else:
            mo.touch()  # current: newer than its .po from now on (./dev.sh compiles an older one)
        written.append(mo)
    return written


class CatalogBuildHook(BuildHookInterface):
    PLUGIN_NAME = "heimer-catalogs"

    def initialize(self, version, build_data):
        root = Path(self.root)
        for mo in compile_catalogs(root):
            if version != "editable":  # the wheel carries the .mo (git ignores it, so hatch would skip it)
                build_data["force_include"][str(mo)] = str(mo.relative_to(root))


if __name__ == "__main__":  # python hatch_build.py: recompile after editing a .po (README "Translations")
    for path in compile_catalogs(Path(__file__).resolve().parent):
        print(path)

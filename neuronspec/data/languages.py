"""Language codes a study may name (ISO 639-1, plus the script each is usually written in).

The script is used to classify tokens and generated text cheaply (logit lens, ROUGE
tokenisation); `lingua-language-detector` refines it where scripts are shared.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    script: str  # Unicode script family: Latin, Cyrillic, Han, Arabic, Devanagari, ...


_TABLE = """
af Afrikaans Latin | am Amharic Ethiopic | ar Arabic Arabic | az Azerbaijani Latin | be Belarusian Cyrillic
bg Bulgarian Cyrillic | bn Bengali Bengali | bs Bosnian Latin | ca Catalan Latin | cs Czech Latin
cy Welsh Latin | da Danish Latin | de German Latin | el Greek Greek | en English Latin | eo Esperanto Latin
es Spanish Latin | et Estonian Latin | eu Basque Latin | fa Persian Arabic | fi Finnish Latin
fr French Latin | ga Irish Latin | gl Galician Latin | gu Gujarati Gujarati | he Hebrew Hebrew
hi Hindi Devanagari | hr Croatian Latin | hu Hungarian Latin | hy Armenian Armenian | id Indonesian Latin
is Icelandic Latin | it Italian Latin | ja Japanese Han | ka Georgian Georgian | kk Kazakh Cyrillic
km Khmer Khmer | kn Kannada Kannada | ko Korean Hangul | la Latin Latin | lt Lithuanian Latin
lv Latvian Latin | mk Macedonian Cyrillic | ml Malayalam Malayalam | mn Mongolian Cyrillic
mr Marathi Devanagari | ms Malay Latin | my Burmese Myanmar | ne Nepali Devanagari | nl Dutch Latin
no Norwegian Latin | pa Punjabi Gurmukhi | pl Polish Latin | pt Portuguese Latin | ro Romanian Latin
ru Russian Cyrillic | sk Slovak Latin | sl Slovenian Latin | sq Albanian Latin | sr Serbian Cyrillic
sv Swedish Latin | sw Swahili Latin | ta Tamil Tamil | te Telugu Telugu | th Thai Thai
tl Tagalog Latin | tr Turkish Latin | uk Ukrainian Cyrillic | ur Urdu Arabic | uz Uzbek Latin
vi Vietnamese Latin | yo Yoruba Latin | zh Chinese Han | zu Zulu Latin
"""

LANGUAGES: dict[str, Language] = {}
for _entry in _TABLE.replace("\n", "|").split("|"):
    if not _entry.strip():
        continue
    _code, _name, _script = _entry.split()
    LANGUAGES[_code] = Language(_code, _name, _script)


def language(code: str) -> Language:
    """The `Language` for `code`; KeyError names the known codes' count for a helpful message."""
    try:
        return LANGUAGES[code]
    except KeyError:
        raise KeyError(f"unknown language code {code!r} (expected one of {len(LANGUAGES)} ISO 639-1 codes, e.g. en, zh, fr)") from None

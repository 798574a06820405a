"""Offline text sources and text cleaning for the embedded demo corpus.

English sentences come from the example sentences inside WordNet's data files
(Debian ``wordnet-base``) and from Debian ``fortunes``; Chinese sentences from
Debian ``fortunes-zh`` (Tang and Song poems, and Debian's own Chinese fortunes).
Cleaned English holds only ``[a-z' ]`` with numbers spelled out; cleaned Chinese
holds only CJK ideographs. Everything a synthesizer would read differently from
its label (acronyms, markup, letters read one by one) is dropped, not repaired.
"""
import collections
import functools
import os
import re
import unicodedata

WORDNET_DIR = '/usr/share/wordnet'
FORTUNES_DIR = '/usr/share/games/fortunes'
ZH_FORTUNE_FILES = ('chinese', 'tang300', 'song100')
# Mandarin sentences to synthesize use only the text's 1000 most frequent characters: with
# all 3226 characters of 3000 sentences most were heard a few times and the demo model
# still emitted only blanks after 2 epochs; 1000 keeps 5843 sentences of 4-14 characters.
# The LM text keeps every sentence.
ZH_SPOKEN_CHARS = 1000
# English fortune files that are not English prose
EN_FORTUNE_SKIP = ('ascii-art', 'translate-me') + ZH_FORTUNE_FILES

ANSI_RE = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')
CJK_RE = re.compile(r'[\u3400-\u4dbf\u4e00-\u9fff]')
NOT_CJK_RE = re.compile(r'[^\u3400-\u4dbf\u4e00-\u9fff]')

# ---------------------------------------------------------------- sources


def wordnet_examples(wordnet_dir=WORDNET_DIR):
    """The quoted example sentences of WordNet's data.* files, in file order."""
    out = []
    for pos in ('noun', 'verb', 'adj', 'adv'):
        path = os.path.join(wordnet_dir, 'data.' + pos)
        with open(path, encoding='utf-8', errors='replace') as f:
            for line in f:
                if line.startswith('  ') or ' | ' not in line:
                    continue  # licence header or no gloss
                gloss = line.split(' | ', 1)[1]
                out.extend(re.findall(r'"([^"]+)"', gloss))
    return out


def fortune_entries(path):
    """The entries of one fortune file (separated by lines holding ``%``)."""
    with open(path, encoding='utf-8', errors='replace') as f:
        text = ANSI_RE.sub('', f.read())
    return [e for e in re.split(r'\n%\n', text) if e.strip()]


def english_fortune_files(fortunes_dir=FORTUNES_DIR):
    names = sorted(n for n in os.listdir(fortunes_dir)
                   if '.' not in n and n not in EN_FORTUNE_SKIP)
    return [os.path.join(fortunes_dir, n) for n in names
            if os.path.isfile(os.path.join(fortunes_dir, n))]


def fortune_sentences_en(fortunes_dir=FORTUNES_DIR):
    """Sentences of the English fortunes, attribution lines removed."""
    out = []
    for path in english_fortune_files(fortunes_dir):
        for entry in fortune_entries(path):
            lines = [ln.strip() for ln in entry.split('\n')
                     if not ln.strip().startswith('--')]
            text = ' '.join(ln for ln in lines if ln)
            out.extend(re.split(r'(?<=[.!?])["\')]*\s+', text))
    return out


def fortune_sentences_zh(fortunes_dir=FORTUNES_DIR):
    """Sentences of the Chinese fortunes: titles and author lines removed,
    wrapped prose lines joined, split at sentence-ending punctuation."""
    out = []
    for name in ZH_FORTUNE_FILES:
        path = os.path.join(fortunes_dir, name)
        if not os.path.isfile(path):
            continue
        for entry in fortune_entries(path):
            lines = [ln.strip() for ln in entry.split('\n')]
            keep = [ln for ln in lines if ln and not _zh_heading(ln)]
            out.extend(re.split(r'[。！？；…!?;\n]+', ''.join(keep)))
    return out


def _zh_heading(line):
    return (line.startswith(('《', '题目', '--', '—')) or '作者' in line[:6]
            or line.startswith('[') or '│' in line)


# ---------------------------------------------------------------- numbers
ONES = ('zero one two three four five six seven eight nine ten eleven twelve '
        'thirteen fourteen fifteen sixteen seventeen eighteen nineteen').split()
TENS = 'zero ten twenty thirty forty fifty sixty seventy eighty ninety'.split()
SCALES = ((10 ** 9, 'billion'), (10 ** 6, 'million'), (1000, 'thousand'))
ORDINAL_ENDINGS = {'one': 'first', 'two': 'second', 'three': 'third',
                   'five': 'fifth', 'eight': 'eighth', 'nine': 'ninth',
                   'twelve': 'twelfth'}


def number_words(n):
    """Cardinal English words of a non-negative integer: 342 -> three hundred forty two."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ('' if n % 10 == 0 else ' ' + ONES[n % 10])
    if n < 1000:
        rest = '' if n % 100 == 0 else ' ' + number_words(n % 100)
        return ONES[n // 100] + ' hundred' + rest
    for value, name in SCALES:
        if n >= value:
            rest = '' if n % value == 0 else ' ' + number_words(n % value)
            return number_words(n // value) + ' ' + name + rest
    raise ValueError(n)


def year_words(n):
    """1066 -> ten sixty six, 1900 -> nineteen hundred, 1905 -> nineteen oh five."""
    hi, lo = divmod(n, 100)
    if lo == 0:
        return number_words(hi) + ' hundred'
    return number_words(hi) + (' oh ' if lo < 10 else ' ') + number_words(lo)


def ordinal_words(n):
    words = number_words(n).split()
    last = words[-1]
    if last in ORDINAL_ENDINGS:
        words[-1] = ORDINAL_ENDINGS[last]
    elif last.endswith('y'):
        words[-1] = last[:-1] + 'ieth'
    else:
        words[-1] = last + 'th'
    return ' '.join(words)


def _number_sub(match):
    digits, suffix = match.group(1).replace(',', ''), (match.group(2) or '').lower()
    n = int(digits)
    if suffix in ('st', 'nd', 'rd', 'th'):
        return ' %s ' % ordinal_words(n)
    is_year = len(digits) == 4 and 1100 <= n <= 1999 and ',' not in match.group(1)
    words = (year_words(n) if is_year else number_words(n)).split()
    if suffix == 's':  # the 1960s, in his 90s
        words[-1] = _plural(words[-1])
    return ' %s ' % ' '.join(words)


def _plural(word):
    return word[:-1] + 'ies' if word.endswith('y') else word + 's'


DIGIT_RE = re.compile(r'\d')
BAD_NUMBER_RE = re.compile(r'\d[.:/]\d|\d{10,}')
NUMBER_RE = re.compile(r'\b(\d{1,3}(?:,\d{3})+|\d+)(st|nd|rd|th|s)?\b')


def spell_numbers(text):
    """Spell out integers, ordinals (1st), decades (1960s) and years (1492)."""
    if not DIGIT_RE.search(text):
        return text
    if BAD_NUMBER_RE.search(text):
        return None  # decimals, times, dates, fractions, huge numbers: drop
    text = NUMBER_RE.sub(_number_sub, text)
    return None if DIGIT_RE.search(text) else text


# ---------------------------------------------------------------- cleaning
ABBREVIATIONS = {'mr.': 'mister', 'mrs.': 'missus', 'dr.': 'doctor',
                 'st.': 'saint', 'vs.': 'versus', 'etc.': 'et cetera',
                 'mt.': 'mount', 'jr.': 'junior', 'sr.': 'senior'}
ABBREVIATION_RE = re.compile(r'\b(%s)' % '|'.join(map(re.escape, ABBREVIATIONS)))
# markup, code, urls, money; acronyms read letter by letter; e.g. i.e. a.m. p.m.
REJECT_RE = re.compile(r'[<>{}\[\]|\\/_=@#*~^+$]|\b[A-Z]{2,}|\b([eE]\.g|[iI]\.e|[aApP]\.m)\b')
QUOTES_RE = re.compile('[`\u2018\u2019\u00b4]')
NON_LETTER_RE = re.compile(r"[^a-z']+")
LOOSE_QUOTE_RE = re.compile(r"(?<![a-z])'|'(?![a-z])")
# words a synthesizer spells out or reads oddly: no vowel, one letter other than
# a and i, a letter three times in a row, roman numerals
UNSPEAKABLE_RE = re.compile(
    r"(?:^| )(?:[^ aeiouy]+|[^ ai]|ii|iii|iv|vi|vii|viii|ix|xi|xii|xiv|xx)(?= |$)|(\w)\1\1")


def clean_en(text, min_words=1, max_words=10 ** 6):
    """Lower-case ``[a-z' ]`` text with numbers spelled out, or None where the
    sentence cannot be read back exactly (acronyms, markup, decimals ...)."""
    text = QUOTES_RE.sub("'", ANSI_RE.sub('', text))
    text = unicodedata.normalize('NFKD', text).encode('ascii', 'ignore').decode('ascii')
    if REJECT_RE.search(text):
        return None
    text = ABBREVIATION_RE.sub(lambda m: ' %s ' % ABBREVIATIONS[m.group(1)], text.lower())
    text = spell_numbers(text.replace('&', ' and ').replace('%', ' percent '))
    if text is None:
        return None
    text = LOOSE_QUOTE_RE.sub(' ', NON_LETTER_RE.sub(' ', text))
    text = ' '.join(text.split())
    if not min_words <= text.count(' ') + 1 <= max_words or UNSPEAKABLE_RE.search(text):
        return None
    return text


def clean_zh(text, min_chars=1, max_chars=10 ** 6):
    """CJK ideographs only, or None where the sentence holds latin letters or
    digits (which the Mandarin voice would read as something else)."""
    text = unicodedata.normalize('NFKC', ANSI_RE.sub('', text))
    if re.search(r'[A-Za-z0-9]', text):
        return None
    text = NOT_CJK_RE.sub('', text)
    return text if min_chars <= len(text) <= max_chars else None


def split_zh_long(sentence, max_chars):
    """Sentences longer than max_chars split at commas into clauses."""
    if len(NOT_CJK_RE.sub('', sentence)) <= max_chars:
        return [sentence]
    return re.split(r'[，、：,:]+', sentence)


# ---------------------------------------------------------------- corpus


def unique(items):
    """Items without repeats or None, first occurrence kept, order kept."""
    seen, out = set(), []
    for item in items:
        if item and item not in seen:
            seen.add(item)
            out.append(item)
    return out


@functools.lru_cache(maxsize=4)
def load_sentences(lang, min_len, max_len, lm_min=2, lm_max=40):
    """(synthesis sentences, language-model sentences), both cleaned, unique,
    in a fixed order, as tuples. The synthesis set is the length-limited subset."""
    if lang == 'en':
        raw = wordnet_examples() + fortune_sentences_en()
        lm = unique(clean_en(s, lm_min, lm_max) for s in raw)
        spoken = [s for s in lm if min_len <= len(s.split()) <= max_len]
    else:
        pieces = (c for s in fortune_sentences_zh() for c in split_zh_long(s, max_len))
        lm = unique(clean_zh(c, lm_min, lm_max) for c in pieces)
        counts = collections.Counter(char for s in lm for char in s)
        common = {char for char, _ in counts.most_common(ZH_SPOKEN_CHARS)}
        spoken = [s for s in lm if min_len <= len(s) <= max_len and set(s) <= common]
    return tuple(spoken), tuple(lm)


def missing_sources(lang):
    """Paths of the offline text sources that are absent, with their package."""
    if lang == 'en':
        need = {os.path.join(WORDNET_DIR, 'data.noun'): 'wordnet-base',
                os.path.join(FORTUNES_DIR, 'wisdom'): 'fortunes'}
    else:
        need = {os.path.join(FORTUNES_DIR, 'tang300'): 'fortunes-zh'}
    return {path: pkg for path, pkg in need.items() if not os.path.isfile(path)}

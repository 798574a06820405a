"""Build the embedded demo corpus offline: synthetic speech with MASR annotation lists.

English is read by many espeak-ng accents and voice variants and by flite's
voices; Mandarin by espeak-ng's ``cmn-latn-pinyin`` voice with its variants. The
sentences come from Debian packages (WordNet examples and fortunes in English,
fortunes-zh in Chinese), so nothing is downloaded. Train and test share no
sentence; the test set holds voices never heard in training (flite ``awb`` and
espeak variants ``m3`` and ``f4`` in English, variant ``f4`` in Mandarin) and
training voices reading unseen sentences. ``--seed`` fixes sentences, voices and
prosody; the test set depends only on ``--seed`` and ``--num_test``. Annotation
paths start with ``--out_dir`` as given, so a relative one (the default) makes
them relative to the folder this runs in: run it from the repository root.

Writes (``<out>`` is ``--out_dir``, default ``dataset/demo_<lang>``, as ``make demo`` uses: not
``dataset`` itself, whose annotation lists are the user's own):
  <out>/annotation/train.txt, test.txt   ``path<TAB>text`` (MASR annotation lists)
  <out>/audio/demo_<lang>/{train,test}/NNNNNN.wav   16 kHz mono 16-bit PCM
  <out>/audio/demo_<lang>/voices.tsv     path, split, voice, duration, prosody
  <out>/audio/demo_<lang>/corpus.json    parameters, counts, voices; a re-run
                                         with the same parameters does nothing
  <out>/lm_text_<lang>.txt    every cleaned source sentence except the test ones,
                              one per line, for training the demo's KenLM model

    python tools/make_demo_corpus.py --lang en --num_train 3000 --num_test 200
"""
import argparse
import concurrent.futures
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import wave

if __package__ in (None, ''):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import demo_text  # noqa: E402

VERSION = 2  # bump when the output for the same parameters changes
SAMPLE_RATE = 16000
# spoken sentence length: words (en) or characters (zh); about 1.5-5 s of audio
LENGTHS = {'en': (4, 12), 'zh': (4, 14)}
EN_ACCENTS = ('en-gb', 'en-us', 'en-gb-scotland', 'en-gb-x-gbclan', 'en-gb-x-gbcwmd',
              'en-gb-x-rp', 'en-029', 'en-us-nyc')
ZH_ACCENTS = ('cmn-latn-pinyin',)  # voice `cmn` reads many characters as English
VARIANTS = ('m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7', 'm8', 'f1', 'f2', 'f3', 'f4', 'f5',
            'klatt', 'klatt2', 'klatt3', 'klatt4', 'Andy', 'Annie', 'Alex', 'Gene',
            'linda', 'max', 'steph', 'travis', 'robert', 'paul', 'adam', 'david')
HELDOUT_VARIANTS = {'en': ('m3', 'f4'), 'zh': ('f4',)}  # test only
FLITE_TRAIN, FLITE_HELDOUT = ('kal16', 'rms', 'slt'), ('awb',)
FLITE_SHARE = 0.3  # share of English training utterances read by flite
TOOLS = {'en': ('espeak-ng', 'flite', 'sox'), 'zh': ('espeak-ng', 'sox')}
PACKAGES = {'en': 'espeak-ng flite sox wordnet-base fortunes',
            'zh': 'espeak-ng sox fortunes-zh'}


# ---------------------------------------------------------------- voices


def voice_groups(lang):
    """(training groups, held-out groups): each group is the list of voices of one
    speaker (an espeak variant under every accent, or one flite voice)."""
    accents = EN_ACCENTS if lang == 'en' else ZH_ACCENTS
    held = HELDOUT_VARIANTS[lang]

    def espeak(variant):
        return ['espeak-ng:%s+%s' % (a, variant) for a in accents]
    train = [espeak(v) for v in VARIANTS if v not in held]
    test = [espeak(v) for v in held]
    if lang == 'en':
        train += [['flite:' + v] for v in FLITE_TRAIN]
        test = [['flite:' + v] for v in FLITE_HELDOUT] + test
    return train, test


def choose_voice(rng, groups):
    flite = [g for g in groups if g[0].startswith('flite:')]
    espeak = [g for g in groups if not g[0].startswith('flite:')]
    pool = flite if flite and rng.random() < FLITE_SHARE else espeak
    return rng.choice(rng.choice(pool))


def choose_prosody(rng, voice):
    """Random speed, pitch, word gap and output peak level for one utterance."""
    if voice.startswith('flite:'):
        prosody = {'stretch': round(rng.uniform(0.85, 1.15), 2),
                   'cents': rng.randint(-200, 200)}
    else:
        prosody = {'speed': rng.randint(140, 200), 'pitch': rng.randint(25, 75),
                   'gap': rng.randint(0, 2)}
    prosody['peak_db'] = round(rng.uniform(-12.0, -1.0), 1)
    return prosody


# ---------------------------------------------------------------- planning


def plan_corpus(sentences, lang, num_train, num_test, seed):
    """Jobs (split, index, text, voice, prosody): sentences drawn without
    replacement, so train and test share none; even test utterances use
    held-out voices in turn, odd ones training voices."""
    if num_train + num_test > len(sentences):
        raise SystemExit('error: %d sentences requested but the %s source has only %d'
                         % (num_train + num_test, lang, len(sentences)))
    rng = random.Random(seed)
    order = list(sentences)
    rng.shuffle(order)
    train_groups, test_groups = voice_groups(lang)
    jobs = []
    for i, text in enumerate(order[:num_test]):
        if i % 2 == 0:
            voice = rng.choice(test_groups[(i // 2) % len(test_groups)])
        else:
            voice = choose_voice(rng, train_groups)
        jobs.append(('test', i, text, voice, choose_prosody(rng, voice)))
    for i, text in enumerate(order[num_test:num_test + num_train]):
        voice = choose_voice(rng, train_groups)
        jobs.append(('train', i, text, voice, choose_prosody(rng, voice)))
    return jobs


# ---------------------------------------------------------------- synthesis


def tts_command(voice, prosody, text):
    """The command that writes the utterance as a WAV stream on stdout, and the
    sox effects that finish it."""
    engine, name = voice.split(':', 1)
    if engine == 'flite':
        cmd = ['flite', '-voice', name, '--setf', 'duration_stretch=%s' % prosody['stretch'],
               '-t', text, '-o', '/dev/stdout']
        return cmd, ['pitch', str(prosody['cents'])]
    cmd = ['espeak-ng', '-v', name, '-s', str(prosody['speed']), '-p', str(prosody['pitch']),
           '-g', str(prosody['gap']), '--stdout', text]
    return cmd, []


def synthesize(path, text, voice, prosody):
    """Write one 16 kHz mono 16-bit utterance to path (atomically); its duration."""
    cmd, effects = tts_command(voice, prosody, text)
    tts = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if tts.returncode != 0 or len(tts.stdout) < 1000:
        raise RuntimeError('%s failed on %r: %s' % (cmd[0], text, tts.stderr.decode()[-500:]))
    part = path + '.part'
    sox = ['sox', '-R', '-V1', '-t', 'wav', '-', '-t', 'wav', '-c', '1', '-b', '16', part,
           'remix', '-'] + effects + ['rate', str(SAMPLE_RATE), 'gain', '-n',
                                      str(prosody['peak_db'])]
    res = subprocess.run(sox, input=tts.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if res.returncode != 0:
        raise RuntimeError('sox failed for %s: %s' % (path, res.stderr.decode()[-500:]))
    os.replace(part, path)
    with wave.open(path) as w:
        return w.getnframes() / w.getframerate()


def synthesize_all(jobs, audio_dir, num_workers):
    """Synthesize every job in parallel (each job runs its own processes);
    returns the durations in job order."""
    from tqdm import tqdm
    paths = [wav_path(audio_dir, split, i) for split, i, *_ in jobs]
    pool = concurrent.futures.ThreadPoolExecutor(max(1, num_workers))
    try:
        futures = [pool.submit(synthesize, p, job[2], job[3], job[4])
                   for p, job in zip(paths, jobs)]
        bar = tqdm(concurrent.futures.as_completed(futures), total=len(futures),
                   desc='synthesizing', unit='utt', file=sys.stderr)
        for future in bar:
            future.result()  # the first failure stops the run
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def wav_path(audio_dir, split, index):
    return os.path.join(audio_dir, split, '%06d.wav' % index)


# ---------------------------------------------------------------- outputs


def write_text(path, lines):
    """Write lines atomically (temporary file, then rename)."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or '.', suffix='.part')
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
        f.writelines(line + '\n' for line in lines)
    os.replace(tmp, path)


def sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def output_paths(out_dir, lang):
    audio_dir = os.path.normpath(os.path.join(out_dir, 'audio', 'demo_' + lang))
    return {'audio_dir': audio_dir,
            'meta': os.path.join(audio_dir, 'corpus.json'),
            'voices': os.path.join(audio_dir, 'voices.tsv'),
            'train': os.path.join(out_dir, 'annotation', 'train.txt'),
            'test': os.path.join(out_dir, 'annotation', 'test.txt'),
            'lm_text': os.path.join(out_dir, 'lm_text_%s.txt' % lang)}


def up_to_date(paths, params):
    """The stored metadata when the corpus on disk was built with params and is
    complete and unchanged since, else None."""
    try:
        with open(paths['meta'], encoding='utf-8') as f:
            meta = json.load(f)
        if meta['params'] != params or not os.path.isfile(paths['lm_text']):
            return None
        for split in ('train', 'test'):
            if sha256(paths[split]) != meta['annotation_sha256'][split]:
                return None
            with open(paths[split], encoding='utf-8') as f:
                if not all(os.path.isfile(ln.split('\t')[0]) for ln in f):
                    return None
    except (OSError, ValueError, KeyError):
        return None
    return meta


def foreign_lists(paths):
    """The annotation lists in the output folder that this tool did not write:
    ones holding a line whose audio lies outside its own audio folder (a user's
    own dataset/annotation, say). Lists it wrote, even by a run killed before
    corpus.json, name only its own wavs."""
    own = os.path.abspath(paths['audio_dir']) + os.sep
    foreign = []
    for split in ('train', 'test'):
        try:
            with open(paths[split], encoding='utf-8') as f:
                if any(not os.path.abspath(ln.split('\t')[0]).startswith(own)
                       for ln in f if ln.strip()):
                    foreign.append(paths[split])
        except FileNotFoundError:
            pass
        except (OSError, ValueError):  # unreadable or not UTF-8: not ours either
            foreign.append(paths[split])
    return foreign


def clear_audio(audio_dir):
    """Remove the audio of an earlier build: the folder belongs to this tool."""
    for split in ('train', 'test'):
        shutil.rmtree(os.path.join(audio_dir, split), ignore_errors=True)
        os.makedirs(os.path.join(audio_dir, split))


def write_outputs(paths, lang, jobs, durations, lm_sentences):
    """Annotation lists, voices.tsv and LM text; returns the metadata pieces."""
    rows = {'train': [], 'test': []}
    voices = {'train': set(), 'test': set()}
    tsv = ['path\tsplit\tvoice\tduration\tprosody']
    for (split, i, text, voice, prosody), dur in zip(jobs, durations):
        path = wav_path(paths['audio_dir'], split, i)
        rows[split].append('%s\t%s' % (path, text))
        voices[split].add(voice)
        pros = ','.join('%s=%s' % kv for kv in sorted(prosody.items()))
        tsv.append('\t'.join((path, split, voice, '%.3f' % dur, pros)))
    test_texts = {job[2] for job in jobs if job[0] == 'test'}
    lm = [s for s in lm_sentences if s not in test_texts]
    write_text(paths['voices'], tsv)
    write_text(paths['lm_text'], lm)
    for split in ('train', 'test'):
        write_text(paths[split], rows[split])
    held = [g[0] if len(g) == 1 else 'espeak-ng:*+' + g[0].split('+')[1]
            for g in voice_groups(lang)[1]]
    return {'voices': {'train': sorted(voices['train']), 'test': sorted(voices['test']),
                       'heldout': sorted(voices['test'] - voices['train']),
                       'heldout_speakers': held},
            'annotation_sha256': {s: sha256(paths[s]) for s in ('train', 'test')},
            'lm_sentences': len(lm)}


# ---------------------------------------------------------------- main


def check_requirements(lang):
    """Exit with the apt-get line to run when a tool or text source is missing."""
    missing = [t for t in TOOLS[lang] if shutil.which(t) is None]
    missing += ['%s (package %s)' % kv for kv in demo_text.missing_sources(lang).items()]
    if missing:
        raise SystemExit('error: the %s demo corpus needs %s, which %s missing; install '
                         'with: sudo apt-get install -y %s'
                         % (lang, ', '.join(missing), 'is' if len(missing) == 1 else 'are',
                            PACKAGES[lang]))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--lang', choices=('en', 'zh'), default='en',
                        help='en: espeak-ng + flite voices; zh: espeak-ng cmn-latn-pinyin')
    parser.add_argument('--num_train', type=int, default=3000, help='training utterances')
    parser.add_argument('--num_test', type=int, default=200, help='test utterances')
    parser.add_argument('--seed', type=int, default=0,
                        help='fixes the sentences, voices and prosody')
    parser.add_argument('--out_dir', default=None,
                        help='annotation/, audio/demo_<lang>/ and lm_text_<lang>.txt go here '
                             '(default: dataset/demo_<lang>, never your own dataset/annotation)')
    parser.add_argument('--num_workers', type=int, default=os.cpu_count() or 1,
                        help='utterances synthesized in parallel')
    parser.add_argument('--overwrite', action='store_true',
                        help='rebuild even when a corpus with these parameters exists, and '
                             'replace annotation lists this tool did not write')
    args = parser.parse_args(argv)
    if args.num_train < 1 or args.num_test < 1:
        parser.error('--num_train and --num_test must be at least 1')
    if args.out_dir is None:
        args.out_dir = os.path.join('dataset', 'demo_' + args.lang)
    return args


def build(args):
    """Build (or reuse) the corpus; returns the metadata stored in corpus.json."""
    start = time.time()
    paths = output_paths(args.out_dir, args.lang)
    params = {'lang': args.lang, 'num_train': args.num_train, 'num_test': args.num_test,
              'seed': args.seed, 'version': VERSION}
    meta = None if args.overwrite else up_to_date(paths, params)
    if meta is not None:
        print('demo corpus %s already built with these parameters in %s (%.1f s); '
              '--overwrite rebuilds it' % (args.lang, paths['audio_dir'], time.time() - start))
        return dict(meta, skipped=True)
    foreign = [] if args.overwrite else foreign_lists(paths)
    if foreign:
        one = len(foreign) == 1
        raise SystemExit('error: %s name%s audio outside %s: not a demo corpus list%s, and '
                         'building here would replace %s. Choose another --out_dir (default '
                         'dataset/demo_<lang>), or pass --overwrite to replace %s'
                         % (' and '.join(foreign), 's' if one else '', paths['audio_dir'],
                            '' if one else 's', 'it' if one else 'them',
                            'it' if one else 'them'))
    check_requirements(args.lang)
    print('make_demo_corpus: ' + json.dumps(dict(vars(args), **paths)), file=sys.stderr)
    spoken, lm_sentences = demo_text.load_sentences(args.lang, *LENGTHS[args.lang])
    jobs = plan_corpus(spoken, args.lang, args.num_train, args.num_test, args.seed)
    if os.path.exists(paths['meta']):
        os.remove(paths['meta'])  # the corpus is incomplete until it is rewritten
    clear_audio(paths['audio_dir'])
    durations = synthesize_all(jobs, paths['audio_dir'], args.num_workers)
    meta = dict(params=params, **write_outputs(paths, args.lang, jobs, durations, lm_sentences))
    meta['counts'] = {s: sum(j[0] == s for j in jobs) for s in ('train', 'test')}
    meta['hours'] = {s: round(sum(d for j, d in zip(jobs, durations) if j[0] == s) / 3600, 4)
                     for s in ('train', 'test')}
    meta['seconds'] = round(time.time() - start, 1)
    write_text(paths['meta'], [json.dumps(meta, indent=1, ensure_ascii=False)])
    print(summary_line(meta, paths))
    return dict(meta, skipped=False)


def summary_line(meta, paths):
    hours = meta['hours']['train'] + meta['hours']['test']
    voices = set(meta['voices']['train']) | set(meta['voices']['test'])
    return ('demo corpus %s: %d train + %d test utterances, %.2f h of audio, %d voices '
            '(%d heard only in test), %.1f s; wrote %s, %s, %s (%d LM sentences)'
            % (meta['params']['lang'], meta['counts']['train'], meta['counts']['test'], hours,
               len(voices), len(meta['voices']['heldout']), meta['seconds'], paths['train'],
               paths['test'], paths['lm_text'], meta['lm_sentences']))


def main(argv=None):
    return build(parse_args(argv))


if __name__ == '__main__':
    main()

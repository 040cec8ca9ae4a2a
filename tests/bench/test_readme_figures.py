"""Every figure in the README has a JSON behind it: the benchmark sections are rendered from bench/results/ (and
`bench/readme.py --check` says they still are, without loading torch), and the prose around them holds no
measured figure, only definitions and settings, each listed here with what it is."""

import re
import subprocess
import sys
from pathlib import Path

import readme

ROOT = Path(__file__).resolve().parents[2]
SECTION = re.compile(r"<!-- bench:(?P<name>[a-z_]+) -->\n(?P<body>.*?)<!-- /bench:(?P=name) -->", re.S)
NUMBER = r"[-+]?\d+(?:\.\d+)?(?:\s?[-–]\s?\d+(?:\.\d+)?)?"
UNIT = (
    r"(?:%|x\b|×|\s(?:J|kJ|W|s|ms|min|minutes|hours|MB|GB|tok/s|tokens/s|requests/s|g/kWh|g|kWh|J/token|"
    r"core-seconds)\b)"
)
# a number with a unit, or after a quality metric's name (KLD and perplexity have no unit)
FIGURE = re.compile(rf"(?<![\w.\-/]){NUMBER}{UNIT}|\b(?:KLD|PPL|perplexity|Spearman)\s{NUMBER}")
HEAVY = ("torch", "transformers", "llama_cpp", "matplotlib", "greenlm")

# Figures the prose may hold: definitions, defaults, settings and targets, not measurements. Each entry is a
# phrase of the README (inline code removed, whitespace collapsed) that contains the figure, and what it is.
ALLOWED = {
    "for 6 minutes": "the demo command's --time-budget 6m",
    "With 6 minutes": "the demo command's --time-budget 6m",
    "calibration (60%) and evaluation (40%)": "the text split's definition",
    "range / 1000 W / 2, 1-60 s": "the RAPL wrap guard's reading interval, a constant",
    "power sampled every 0.05 s": "the NVML meter's sampling interval, a constant",
    "= 7.5 W, the middle": "DEFAULT_WATTS_PER_CORE, a constant",
    "6248 150 W / 20 = 7.5": "a TDP from codecarbon's table, the constant's source",
    "7.5 W applies": "DEFAULT_WATTS_PER_CORE, a constant",
    "3 W per 8 GB": "the memory power constant",
    "475 g/kWh": "the default grid intensity (codecarbon's world average)",
    "(by 5%)": "the kernel selection threshold",
    "within 25% of the budget": "distill's rule for caching the teacher",
    "within KLD 0.01": "the --max-kld of an example command",
    "at most 15 minutes of training": "the default space's distill budget",
    "more than 3x the budget": "optimize's screening rule",
    "more than 5% cheaper": "optimize's skip rule",
    "at least 1 s": "serve's Retry-After floor",
    "every 2 s": "the dashboard's polling interval",
    "under 1% of the workload": "the meter overhead target",
    "for 15 minutes of wall clock": "the distill benchmark's setting",
    "made at 10% of the budget": "the distill benchmark's forecast point, a setting",
    "within 10% of the measured": "the forecast target",
    "(+3% PPL, KLD 0.05": "optimize's default quality budget",
    "over 10x with bursts": "the trace's rate curve, a definition",
    "a fixed 2 requests/s": "a former setting of the trace",
    "At most about 10 minutes": "the GPU check's time limit",
    "about 8 minutes on 2 cores": "how long pip's first compile of llama.cpp takes, for planning an install",
    "about 200 MB": "the size of PyTorch's CPU wheel (192 MB), what the install downloads",
    "from 64 to 395 g/kWh in 2020": "the GB 2020 trace's range (bench/data/gb-2020-ci.csv, its README)",
    "200 MB by default": "--batch-max-file-bytes's default",
    "(10 minutes)": "--flex-max-wait's default",
    "less 15% of the window": "the planner's deadline margin, a constant",
    "75% of the measured": "the planner's share of measured throughput, a constant",
    "at 720x a 24h window passes": "a replay speed, an example",
    "DCGM's collects every 30 s": "the DCGM exporter's default collection interval (its documentation)",
    "the share of requests within 10%": "the gateway benchmark's target (issue 21), a definition",
    "sampled every 0.2 s": "serve_load's outside energy sampling interval, a setting",
}


def prose(text: str) -> str:
    """The README without its rendered sections, code blocks and inline code, whitespace collapsed."""
    text = SECTION.sub("", text)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.sub(r"\s+", " ", text)


def untraced(text: str) -> list[str]:
    """Figures in the prose of `text` that no ALLOWED phrase covers, each with its context."""
    body = prose(text)
    covered = [(m.start(), m.end()) for phrase in ALLOWED for m in re.finditer(re.escape(phrase), body)]
    return [
        body[max(0, m.start() - 40) : m.end() + 20]
        for m in FIGURE.finditer(body)
        if not any(a <= m.start() and m.end() <= b for a, b in covered)
    ]


def test_every_rendered_section_has_its_json_or_says_it_has_none():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    sections = list(SECTION.finditer(text))
    assert len(sections) >= 10
    for s in sections:
        name = s.group("name")
        if (ROOT / "bench" / "results" / f"{name}.json").is_file():
            assert f"JSON: `bench/results/{name}.json`" in s.group("body"), name
        else:  # no JSON: the section says so, and holds no figure
            expected = readme.PLACEHOLDERS.get(
                name, f"(no result yet: run the benchmark to write `bench/results/{name}.json`)"
            )
            assert s.group("body").strip() == expected, name
            assert not FIGURE.search(s.group("body")), name


def test_readme_check_passes_without_loading_torch():
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "bench" / "readme.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, "README.md differs from bench/results: run bench/readme.py"
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert not {m.split(".")[0] for m in imported} & set(HEAVY)


def test_readme_prose_holds_no_untraced_figure():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert untraced(text) == [], "a measured figure belongs in a rendered section; a definition, in ALLOWED"
    body = prose(text)
    stale = [phrase for phrase in ALLOWED if phrase not in body]
    assert stale == [], "ALLOWED phrases no longer in README.md: remove them"


def test_a_new_figure_in_prose_is_caught():
    base = "The default budget (+3% PPL, KLD 0.05, a 20-minute time budget).\n"
    assert untraced(base) == []
    # an allowed phrase covers its own place only: the same figure elsewhere is flagged
    assert untraced(base + "Defaults are +3% PPL.\n")
    for added in (
        "In a probe here it ran 25-35% slower.",
        "30% of requests were refused.",
        "The closest was 4.2% dearer.",
        "It took 13 minutes.",
        "The cheaper ones have KLD 0.52 and 0.86.",
        "It decoded 2.3 tok/s on 2 threads.",
    ):
        assert untraced(base + added + "\n"), added
    # rendered sections and code are not prose
    fenced = base + "<!-- bench:x -->\n30% faster\n<!-- /bench:x -->\n```\n--minutes 15\n```\n"
    assert untraced(fenced) == []

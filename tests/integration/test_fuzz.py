"""Bounded libFuzzer runs of the ClientHello parser (fuzz/clienthello.sh), the h2c preface
scanner with its HPACK decoder (fuzz/h2preface.sh), and the rest of what a multiplexer reads
from clients and workers (fuzz/mux-input.sh); longer runs by hand."""
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fuzz(script):
    """Runs fuzz/`script` for PERUSER_FUZZ_SECONDS (30): it must finish without a finding."""
    seconds = os.environ.get("PERUSER_FUZZ_SECONDS", "30")
    result = subprocess.run([os.path.join(REPO, "fuzz", script), seconds], capture_output=True,
                            text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Done" in output and "stat::number_of_executed_units" in output, output[-2000:]


def test_clienthello_parser_survives_a_bounded_fuzz_run():
    fuzz("clienthello.sh")


def test_h2c_preface_scanner_survives_a_bounded_fuzz_run():
    fuzz("h2preface.sh")


def test_multiplexer_input_readers_survive_a_bounded_fuzz_run():
    fuzz("mux-input.sh")

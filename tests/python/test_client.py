"""flashcore.Client against a real flashcored on loopback (no GPU needed)."""

import hashlib
import shutil
import socket
import threading
import time

import grpc
import pytest

from conftest import REPO

HEX = set("0123456789abcdef")


def small(flashcore, **overrides):
    fields = dict(dtype="fp16", head_dim=64, heads=8, batch=2, seq_q=512)
    fields.update(overrides)
    return flashcore.kernel_request(**fields)


def raises_code(flashcore, code, call, *args, **kwargs):
    with pytest.raises(flashcore.FlashCoreError) as info:
        call(*args, **kwargs)
    assert info.value.code == code, "%s: %s" % (info.value.code, info.value)
    return info.value


# -- address and health -------------------------------------------------------


def test_address_defaults_to_flashcore_address_then_the_clis_default(flashcore, monkeypatch):
    monkeypatch.setenv("FLASHCORE_ADDRESS", "127.0.0.1:6123")
    assert flashcore.Client().address == "127.0.0.1:6123"
    assert flashcore.Client("10.1.2.3:5").address == "10.1.2.3:5"
    monkeypatch.delenv("FLASHCORE_ADDRESS")
    cli_source = (REPO / "client" / "cli" / "cli.hpp").read_text()  # Globals
    assert 'std::string address = "%s";' % flashcore.DEFAULT_ADDRESS in cli_source
    assert flashcore.Client().address == flashcore.DEFAULT_ADDRESS == "127.0.0.1:50051"


def test_health_is_serving(client):
    assert client.health() == "SERVING"


def test_health_of_an_unknown_service_is_not_found(flashcore, client):
    error = raises_code(flashcore, grpc.StatusCode.NOT_FOUND, client.health, "no.such.Service")
    assert error.message.startswith("Health.Check: ")


def test_unreachable_daemon_is_unavailable_with_the_address(flashcore):
    with socket.socket() as s:  # a port nobody listens on: bound, never listened
        s.bind(("127.0.0.1", 0))
        address = "127.0.0.1:%d" % s.getsockname()[1]
        c = flashcore.Client(address, timeout=10)
        error = raises_code(flashcore, grpc.StatusCode.UNAVAILABLE, c.server_info)
    assert "cannot reach flashcored at " + address in error.message
    assert error.rpc == "GetServerInfo"


def test_server_info(client):
    info = client.server_info()
    assert info.version == "0.1.0"
    assert info.nvrtc_version
    assert "attention_fwd" in info.templates
    assert set(info.supported_archs) == {"sm_80", "sm_86", "sm_89", "sm_90", "sm_90a"}
    assert info.default_arch in info.supported_archs
    if not info.gpu_available:
        assert info.gpu_unavailable_reason


# -- compile, get, list -------------------------------------------------------


def test_compile_then_memory_hit_then_get_by_key(flashcore, client):
    request = small(flashcore, head_dim=32, arch="sm_80")
    handle = client.compile(request)
    assert set(handle.key) <= HEX and len(handle.key) == 64
    assert handle.tier == flashcore.pb.CACHE_TIER_COMPILED
    assert handle.cubin[:4] == b"\x7fELF"
    assert handle.cubin_size == len(handle.cubin)
    assert hashlib.sha256(handle.cubin).hexdigest() == handle.cubin_sha256
    assert handle.lowered_name.startswith("_ZN9flashcore13attention_fwd")
    assert handle.arch == "sm_80"
    assert handle.problem.head_dim == 32 and handle.problem.heads == 8
    # Answers carry concrete values: the family's rule for the automatic fields.
    assert handle.config.q_placement != flashcore.pb.Q_PLACEMENT_UNSPECIFIED
    assert handle.config.smem_layout == flashcore.pb.SMEM_LAYOUT_SWIZZLED
    # grid = (ceil(seq_q / block_m), heads, batch), block = warps * 32.
    assert (handle.launch.grid.x, handle.launch.grid.y, handle.launch.grid.z) == (4, 8, 2)
    assert handle.launch.block.x == 128
    # Q tile plus 2 stages of K and V tiles, 2-byte elements (tile_config.cpp smem_bytes).
    assert handle.launch.dynamic_smem_bytes == (128 * 32 + 2 * 2 * 64 * 32) * 2
    assert handle.abi.params_struct == "flashcore::AttentionParams"
    assert handle.abi.abi_version == 1 and handle.abi.params_size == 168
    assert handle.resources.registers > 0

    again = client.compile(request)
    assert again.tier == flashcore.pb.CACHE_TIER_MEMORY
    assert again.key == handle.key and again.cubin == handle.cubin

    fetched = client.get_kernel(handle.key)
    assert fetched.cubin == handle.cubin and fetched.lowered_name == handle.lowered_name
    meta = client.get_kernel(handle.key, omit_cubin=True)
    assert meta.cubin == b"" and meta.cubin_size == len(handle.cubin)
    # Another run-time shape of the same class: the same cubin, its own grid.
    shape = flashcore.problem(dtype="fp16", head_dim=32, heads=3, batch=5, seq_q=1000)
    reshaped = client.get_kernel(handle.key, omit_cubin=True, problem=shape)
    assert (reshaped.launch.grid.x, reshaped.launch.grid.y, reshaped.launch.grid.z) == (8, 3, 5)


def test_compile_omit_cubin_and_bf16_causal_bhsd(flashcore, client):
    handle = client.compile(dtype="bf16", head_dim=96, causal=True, layout="bhsd", heads=4,
                            seq_q=100, seq_k=300, arch="sm_90a", omit_cubin=True,
                            config=flashcore.tile_config(128, 64, 8, 2))
    assert handle.cubin == b"" and handle.cubin_size > 0
    assert handle.problem.dtype == flashcore.pb.DTYPE_BF16 and handle.problem.causal
    assert handle.problem.layout == flashcore.pb.LAYOUT_BHSD
    assert handle.problem.seq_k == 300
    assert handle.config.smem_layout == flashcore.pb.SMEM_LAYOUT_PADDED  # D 96: 12 chunks
    assert "bf16_t, 96, true" in handle.name_expression


def test_request_message_and_keywords_are_exclusive(flashcore, client):
    with pytest.raises(TypeError):
        client.compile(small(flashcore), head_dim=64)


def test_list_kernels_pages_in_key_order(flashcore, client):
    keys = set()
    for stages in (1, 2, 3):
        keys.add(client.compile(small(flashcore, head_dim=64, arch="sm_89",
                                      config=flashcore.tile_config(64, 64, 4, stages),
                                      omit_cubin=True)).key)
    first = client.list_kernels(page_size=2)
    assert len(first.kernels) == 2 and first.next_page_token
    listed = [k.key for k in client.iter_kernels(page_size=2)]
    assert listed == sorted(listed) and len(listed) == len(set(listed))
    assert keys <= set(listed)
    summary = next(k for k in client.iter_kernels() if k.key in keys)
    assert summary.template_id == "attention_fwd" and summary.arch == "sm_89"
    assert summary.problem.head_dim == 64 and summary.cubin_size > 0


def test_results_are_empty_without_tuning(client):
    assert list(client.list_tuning_results().results) == []
    assert list(client.iter_tuning_results(page_size=1)) == []


def test_get_tuning_result_not_found_names_the_bucket(flashcore, client):
    error = raises_code(flashcore, grpc.StatusCode.NOT_FOUND, client.get_tuning_result,
                        small(flashcore, seq_q=1000, seq_k=33, heads=6, batch=5),
                        device="NVIDIA H200")
    assert "bucket seq_q=1024;seq_k=64;batch_heads=32;" in error.message


# -- error paths: one exception type, the gRPC code, the server's message -----


@pytest.mark.parametrize("fields, field_name", [
    (dict(head_dim=80), "problem.head_dim: 80 is not supported"),
    (dict(arch="sm_70"), "arch: 'sm_70' is not supported"),
    (dict(template_id="no_such_template"), "template_id: unknown template"),
    (dict(dtype=0), "problem.dtype: must be set"),
    (dict(batch=-1), "problem.batch: -1 must be >= 1"),
    (dict(heads=8, kv_heads=3), "problem.kv_heads: 3 does not divide heads 8"),
    (dict(seq_q=0), "problem.seq_q"),
    (dict(layout=7), "problem.layout"),
    (dict(tile=dict(warps=3)), "config.warps: 3"),
    (dict(tile=dict(block_m=40)), "config.block_m: 40"),
    (dict(tile=dict(stages=9)), "config.stages: 9"),
    (dict(head_dim=256, arch="sm_86", tile=dict(block_n=128, stages=4)),
     "config: needs 589824 bytes of shared memory, over sm_86's limit"),
])
def test_invalid_compile_requests_name_the_field(flashcore, client, fields, field_name):
    fields = dict(fields)
    if "tile" in fields:
        fields["config"] = flashcore.tile_config(**fields.pop("tile"))
    error = raises_code(flashcore, grpc.StatusCode.INVALID_ARGUMENT, client.compile,
                        small(flashcore, **fields))
    assert error.message.startswith("Compile: ")
    assert field_name in error.message
    assert str(error).endswith("(INVALID_ARGUMENT)")


def test_unknown_enum_names_are_refused_before_sending(flashcore):
    with pytest.raises(ValueError, match="dtype: 'fp8'"):
        flashcore.kernel_request(dtype="fp8", head_dim=64, seq_q=64)


def test_get_kernel_missing_and_malformed_keys(flashcore, client):
    error = raises_code(flashcore, grpc.StatusCode.NOT_FOUND, client.get_kernel, "0" * 64)
    assert "no cached kernel with key " + "0" * 64 in error.message
    error = raises_code(flashcore, grpc.StatusCode.INVALID_ARGUMENT, client.get_kernel, "ABC")
    assert "key: 'ABC' is not 64 lowercase hex" in error.message


def test_get_kernel_with_a_shape_of_another_class(flashcore, client):
    key = client.compile(small(flashcore, omit_cubin=True)).key
    other = flashcore.problem(dtype="fp16", head_dim=128, seq_q=64)
    error = raises_code(flashcore, grpc.StatusCode.INVALID_ARGUMENT, client.get_kernel, key,
                        problem=other)
    assert "problem" in error.message


def test_paging_errors(flashcore, client):
    raises_code(flashcore, grpc.StatusCode.INVALID_ARGUMENT, client.list_kernels, page_size=-1)
    raises_code(flashcore, grpc.StatusCode.INVALID_ARGUMENT, client.list_kernels, page_size=1001)
    error = raises_code(flashcore, grpc.StatusCode.INVALID_ARGUMENT, client.list_kernels,
                        page_token="zzz")
    assert "page_token" in error.message
    raises_code(flashcore, grpc.StatusCode.INVALID_ARGUMENT, client.list_tuning_results,
                page_size=5000)
    raises_code(flashcore, grpc.StatusCode.INVALID_ARGUMENT, client.list_tuning_results,
                page_token="zzz")


def test_get_tuning_result_needs_a_device_on_a_daemon_without_gpu(flashcore, client):
    if client.server_info().gpu_available:
        pytest.skip("the daemon has a GPU to default to")
    error = raises_code(flashcore, grpc.StatusCode.INVALID_ARGUMENT, client.get_tuning_result,
                        small(flashcore))
    assert "device: must be set" in error.message


def test_deadline_exceeded(flashcore, client):
    # A kernel not compiled yet: NVRTC takes far longer than a millisecond.
    request = small(flashcore, head_dim=256, config=flashcore.tile_config(64, 32, 4, 1))
    raises_code(flashcore, grpc.StatusCode.DEADLINE_EXCEEDED, client.compile, request,
                timeout=0.001)


# -- what a daemon without GPU workers answers --------------------------------


def _require_no_workers(client):
    info = client.server_info()
    if info.gpu_available:
        pytest.skip("this daemon has a GPU (%s); the refusals below need one without" %
                    info.gpu_name)


def test_tune_is_refused_with_failed_precondition_without_workers(flashcore, client):
    _require_no_workers(client)
    stream = client.tune(small(flashcore, head_dim=128, seq_q=4096), max_evaluations=8)
    error = raises_code(flashcore, grpc.StatusCode.FAILED_PRECONDITION, list, stream)
    assert error.message.startswith("Tune: tuning needs a GPU evaluation worker and the daemon "
                                    "has none: ")
    assert stream.result is None


def test_tune_request_message_is_sent_as_is(flashcore, client):
    _require_no_workers(client)
    request = flashcore.pb.TuneRequest(kernel=small(flashcore), searcher="random", seed=3)
    raises_code(flashcore, grpc.StatusCode.FAILED_PRECONDITION, list, client.tune(request))
    # Invalid settings are refused before the worker check, naming the field.
    bad = flashcore.pb.TuneRequest(kernel=small(flashcore), max_evaluations=-1)
    error = raises_code(flashcore, grpc.StatusCode.INVALID_ARGUMENT, list, client.tune(bad))
    assert "max_evaluations" in error.message


def test_validate_is_refused_with_failed_precondition_without_workers(flashcore, client):
    _require_no_workers(client)
    error = raises_code(flashcore, grpc.StatusCode.FAILED_PRECONDITION, client.validate,
                        small(flashcore), options=flashcore.pb.ValidationOptions(
                            determinism_runs=2))
    assert "validation needs a GPU evaluation worker" in error.message


def test_compile_tuned_config_without_gpu_is_failed_precondition(flashcore, client):
    _require_no_workers(client)
    error = raises_code(flashcore, grpc.StatusCode.FAILED_PRECONDITION, client.compile,
                        small(flashcore, use_tuned_config=True))
    assert "use_tuned_config" in error.message


def test_tune_cancel_ends_the_stream_without_an_error(flashcore):
    # A listener that accepts and never answers: the call stays pending until cancelled.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        c = flashcore.Client("127.0.0.1:%d" % server.getsockname()[1], timeout=60)
        stream = c.tune(dtype="fp16", head_dim=64, seq_q=512)
        events = []
        reader = threading.Thread(target=lambda: events.extend(stream))
        reader.start()
        time.sleep(0.5)
        assert reader.is_alive()  # still waiting for the first event
        started = time.monotonic()
        stream.cancel()
        reader.join(timeout=10)
        assert not reader.is_alive() and time.monotonic() - started < 10
        assert stream.cancelled and events == [] and stream.result is None
        c.close()


# -- the server's detail travels in the error ---------------------------------


def test_nvrtc_log_arrives_as_the_error_detail(flashcore, start_daemon, tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "kernel_templates", templates)
    entry = templates / "attention" / "attention_fwd.cuh"
    entry.write_text(entry.read_text() + "\nthis_is_not_cuda flashcore_broken_template;\n")
    daemon = start_daemon("--templates-dir", str(templates))
    c = flashcore.Client(daemon.address, timeout=120)
    error = raises_code(flashcore, grpc.StatusCode.INTERNAL, c.compile, small(flashcore))
    assert error.message.startswith("Compile: ")
    assert "\n" not in error.message
    assert "this_is_not_cuda" in error.detail  # NVRTC's log names the bad line
    assert "error" in error.detail
    c.close()


def test_token_and_tls_reach_a_shared_box_daemon(flashcore, start_daemon, tmp_path):
    """--auth-tokens and --tls-cert: the client's token and tls_ca (or
    $FLASHCORE_TOKEN / $FLASHCORE_TLS_CA) are what the daemon asks for."""
    import hashlib
    import subprocess

    import grpc

    tokens = tmp_path / "tokens"
    tokens.write_text("py-reader read %s\n" % hashlib.sha256(b"py-secret").hexdigest())
    subprocess.run(
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 1 "
        "-subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1",
        shell=True, check=True, cwd=tmp_path, capture_output=True)
    daemon = start_daemon("--auth-tokens", str(tokens), "--tls-cert", str(tmp_path / "cert.pem"),
                          "--tls-key", str(tmp_path / "key.pem"))
    with flashcore.Client(daemon.address, timeout=30, token="py-secret",
                          tls_ca=str(tmp_path / "cert.pem")) as client:
        assert client.server_info().version
        with pytest.raises(flashcore.FlashCoreError) as refused:
            client.compile(dtype="fp16", head_dim=64, seq_q=128)
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    with flashcore.Client(daemon.address, timeout=30, token="",
                          tls_ca=str(tmp_path / "cert.pem")) as client:
        with pytest.raises(flashcore.FlashCoreError) as refused:
            client.server_info()
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert client.health() == "SERVING"  # open for probes


def test_tune_jobs_list_and_cancel(flashcore, client):
    assert list(client.list_tune_jobs().jobs) == []  # nothing queued or running
    error = raises_code(flashcore, grpc.StatusCode.NOT_FOUND, client.cancel_tune_job, 424242)
    assert error.message.startswith("CancelTuneJob: ")


def test_recorded_tuning_jobs_of_a_daemon_that_never_tuned(flashcore, client):
    assert list(client.iter_tuning_jobs()) == []
    error = raises_code(flashcore, grpc.StatusCode.NOT_FOUND, client.get_tuning_job, 7)
    assert "job_id" in error.message
    error = raises_code(flashcore, grpc.StatusCode.INVALID_ARGUMENT, client.list_tuning_jobs, -1)
    assert "page_size" in error.message

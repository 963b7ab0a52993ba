"""Slurm jobs on a GPU node with no prolog script: processes -> jobs from their cgroups (v1, v2, v2 with a
SLUID job directory, several slurmd per host), GPUs -> jobs from cgroup v1 devices.list and dcgm-exporter's
job-mapping directory, end to end through --host-root (tests/fakeslurm.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import parse_exposition, value
from fakegpu import h100
from fakeslurm import V1, V2, SlurmHost, environment
from gputext.slurm import CgroupJob, Job, SlurmJobs, job_of_cgroup, mapping_file_name, parse_mapping_file

SLUID = "s5K1KKYAYG5D00"  # the form of Slurm 26.05's job directories (src/common/sluid.c)
GIB = 1 << 30


# --- cgroup paths ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("7:memory:/slurm/uid_1000/job_4711/step_0/task_0\n9:freezer:/slurm/uid_1000/job_4711/step_0\n",
     CgroupJob("4711", "", "0", 1000, "/slurm/uid_1000/job_4711/step_0")),
    # CgroupPrepend=/slurm_%n with several slurmd: the prefix is anything
    ("4:devices:/slurm_node7/uid_1001/job_12/step_batch\n",
     CgroupJob("12", "", "batch", 1001, "/slurm_node7/uid_1001/job_12/step_batch")),
    ("0::/system.slice/slurmstepd.scope/job_4711/step_extern/user/task_special\n",
     CgroupJob("4711", "", "extern", None, "/system.slice/slurmstepd.scope/job_4711/step_extern")),
    ("0::/system.slice/node1_slurmstepd.scope/job_9/step_interactive/user/task_0\n",
     CgroupJob("9", "", "interactive", None, "/system.slice/node1_slurmstepd.scope/job_9/step_interactive")),
    (f"0::/system.slice/slurmstepd.scope/{SLUID}/step_3/user/task_1\n",
     CgroupJob("", SLUID, "3", None, f"/system.slice/slurmstepd.scope/{SLUID}/step_3")),
])
def test_cgroup_paths_name_the_job_and_step(text, expected):
    assert job_of_cgroup(text) == expected


@pytest.mark.parametrize("text", [
    "0::/user.slice/user-1000.slice/session-4.scope\n",
    "0::/kubepods.slice/kubepods-pod8f2c6a5e_1b3d_4c7e_9a0f_2d4e6b8c0a1f.slice/cri-containerd-ab.scope\n",
    "0::/system.slice/slurmd.service\n",  # slurmd itself runs no job
    "0::/system.slice/slurmstepd.scope/system\n",  # slurmstepd's own part of the scope
    "0::/system.slice/slurmstepd.scope/sSHORT/step_0\n",  # not a SLUID
    "",  # unreadable
    # no Slurm writes these: job ids and uids are 32-bit (a uid of 5,000 digits was an int() ValueError)
    "7:memory:/slurm/uid_" + "1" * 5000 + "/job_4711/step_0/task_0\n",
    "7:memory:/slurm/uid_1000/job_" + "9" * 5000 + "/step_0/task_0\n",
    "0::/system.slice/slurmstepd.scope/job_12345678901/step_0/user/task_0\n",
])
def test_processes_outside_slurm_have_no_job(text):
    assert job_of_cgroup(text) is None


steps = st.one_of(st.integers(0, 2**32 - 3).map(str), st.sampled_from(["batch", "extern", "interactive"]))
job_ids = st.integers(1, 2**32 - 1).map(str)
names = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)


@settings(max_examples=200)
@given(job=job_ids, step=steps, uid=st.integers(0, 2**31), prefix=names, task=st.integers(0, 512))
def test_v1_paths_parse_back(job, step, uid, prefix, task):
    path = f"/{prefix}/uid_{uid}/job_{job}/step_{step}"
    found = job_of_cgroup(f"12:pids:{path}/task_{task}\n11:freezer:{path}\n")
    assert found == CgroupJob(job, "", step, uid, path)


@settings(max_examples=200)
@given(job=job_ids, step=steps, node=st.one_of(st.just(""), names.map(lambda n: n + "_")),
       sluid=st.from_regex(r"s[0-9A-HJKMNP-TV-Z]{13}", fullmatch=True), by_sluid=st.booleans())
def test_v2_paths_parse_back(job, step, node, sluid, by_sluid):
    directory = sluid if by_sluid else f"job_{job}"
    scope = f"/system.slice/{node}slurmstepd.scope/{directory}/step_{step}"
    assert job_of_cgroup(f"0::{scope}/user/task_0\n") == CgroupJob("" if by_sluid else job,
                                                                   sluid if by_sluid else "", step, None, scope)


@settings(max_examples=200)
@given(st.text())
def test_any_cgroup_text_gives_a_job_or_none(text):
    found = job_of_cgroup(text)
    assert found is None or (found.job.isdigit() or found.sluid)


# --- the mapping directory's files ------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [("0", (0, "")), ("7", (7, "")), ("3.0", (3, "0")), ("2.13", (2, "13")),
                                            ("03", None), ("+3", None), ("-2", None), ("1e5", None), (".5", None),
                                            ("1.2.3", None), ("0.1.2", None), ("NaN", None), ("foo", None),
                                            (".gitkeep", None), ("3.", None), ("٣", None)])
def test_mapping_file_names_as_dcgm_exporter_takes_them(name, expected):
    assert mapping_file_name(name) == expected


@settings(max_examples=200)
@given(gpu=st.integers(0, 10**6), instance=st.one_of(st.none(), st.integers(0, 10**6)))
def test_mapping_file_names_parse_back(gpu, instance):
    name = str(gpu) if instance is None else f"{gpu}.{instance}"
    assert mapping_file_name(name) == (gpu, "" if instance is None else str(instance))


def test_mapping_file_lines():
    assert parse_mapping_file("4711\n\n 4712 \n4711\nhello world\n4713") == (["4711", "4712", "4713"],
                                                                                ["hello world"])


@settings(max_examples=200)
@given(st.lists(st.one_of(job_ids, st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12))))
def test_mapping_file_lines_are_jobs_or_reported(lines):
    text = "\n".join(lines)
    jobs, bad = parse_mapping_file(text)
    expected_jobs = list(dict.fromkeys(line.strip() for line in text.splitlines()
                                       if line.strip().isascii() and line.strip().isdigit()))
    assert jobs == expected_jobs
    assert all(line.strip() and line.strip() not in jobs for line in bad)
    assert len(bad) == sum(1 for line in text.splitlines() if line.strip() and line.strip() not in jobs)


# --- one collection's jobs, on fake hosts -------------------------------------------------------------------

def test_v1_job_with_two_steps_is_one_job_with_the_user_from_its_path(tmp_path):
    host = SlurmHost(tmp_path, V1)
    first, second = host.process("4711", "0"), host.process("4711", "1")
    (tmp_path / "proc" / str(first) / "environ").unlink()  # gone: the user comes from the v1 path
    (tmp_path / "proc" / str(second) / "environ").unlink()
    jobs = SlurmJobs(tmp_path)
    one = jobs.for_process(first, (tmp_path / "proc" / str(first) / "cgroup").read_text())
    assert one == Job("4711", "alice", "", "")
    assert jobs.for_process(second, (tmp_path / "proc" / str(second) / "cgroup").read_text()) is one


def test_sluid_directory_takes_the_job_id_from_the_step_s_slurmstepd(tmp_path):
    host = SlurmHost(tmp_path, V2)
    pid = host.process(SLUID, "0", uid=1001)  # no SLURM_JOB_ID in its environment
    host.stepd("8123", SLUID, "0", uid=1001)
    jobs = SlurmJobs(tmp_path)
    assert jobs.for_process(pid, (tmp_path / "proc" / str(pid) / "cgroup").read_text()) == Job("8123", "bob")


def test_sluid_directory_without_its_stepd_or_environment_is_left_unnamed(tmp_path):
    host = SlurmHost(tmp_path, V2)
    pid = host.process(SLUID, "0")
    jobs = SlurmJobs(tmp_path)
    assert jobs.for_process(pid, (tmp_path / "proc" / str(pid) / "cgroup").read_text()) is None
    assert jobs.unresolved_sluids == {SLUID}


def test_environment_of_another_job_is_not_taken(tmp_path):
    """A process whose environment names another job (started from one) keeps its cgroup's job, without
    that environment's account."""
    host = SlurmHost(tmp_path, V2)
    pid = host.process("4711", environ=environment("99", account="other"))
    jobs = SlurmJobs(tmp_path)
    assert jobs.for_process(pid, (tmp_path / "proc" / str(pid) / "cgroup").read_text()) == Job("4711", "alice")


# --- end to end -----------------------------------------------------------------------------------------------

def two_step_job(host: SlurmHost) -> dict:
    """Job 4711 (alice, physics, gpu) with step 0 on GPU 0 and step 1 on GPU 1, and a process outside
    Slurm on GPU 0: {name: pid}."""
    return {"step0": host.process("4711", "0", environ=environment("4711")),
            "step1": host.process("4711", "1", environ=environment("4711")),
            "outside": host.process(None)}


def gpus(pids: dict) -> list:
    return [h100(0, processes=[{"pid": pids["step0"], "used_memory": 10 * GIB},
                               {"pid": pids["outside"], "used_memory": GIB}]),
            h100(1, processes=[{"pid": pids["step1"], "used_memory": 20 * GIB}]), h100(2), h100(3)]


@pytest.mark.parametrize("layout, scope", [(V2, "slurmstepd.scope"), (V2, "node1_slurmstepd.scope"),
                                           (V1, "slurmstepd.scope")])
def test_job_with_two_steps_on_two_gpus(node, tmp_path, layout, scope):
    host = SlurmHost(tmp_path / "host", layout, scope)
    pids = two_step_job(host)
    host.cgroup_job("4711")
    node.write(gpus(pids))
    proc, series = node.collect("--host-root", str(host.root))
    assert proc.returncode == 0, proc.stderr
    memory = "gpu_process_memory_used_bytes"
    assert value(series, memory, gpu="0", pid=str(pids["step0"]), slurm_job="4711") == 10 * GIB
    assert value(series, memory, gpu="1", pid=str(pids["step1"]), slurm_job="4711") == 20 * GIB
    assert value(series, memory, gpu="0", pid=str(pids["outside"]), slurm_job="") == GIB
    job = {"slurm_job": "4711", "slurm_user": "alice", "slurm_account": "physics", "slurm_partition": "gpu",
           "gpu_instance": ""}
    assert value(series, "gpu_slurm_allocation_info", gpu="0", **job) == 1
    assert value(series, "gpu_slurm_allocation_info", gpu="1", **job) == 1
    assert len([s for s in series if s[0] == "gpu_slurm_allocation_info"]) == 2  # one job, not one per step
    # device series carry no job: a job's end starts no new device series
    assert all("slurm_job" not in dict(labels) for name, labels in series if not name.startswith("gpu_process")
               and name != "gpu_slurm_allocation_info")
    assert value(series, "gputext_collector_success", collector="slurm") == 1


def test_an_exited_process_keeps_its_job_but_holds_no_gpu(node, tmp_path):
    host = SlurmHost(tmp_path / "host", V2)
    pids = two_step_job(host)
    node.write(gpus(pids))
    assert node.collect("--host-root", str(host.root))[0].returncode == 0
    node.write([h100(0, processes=[]), h100(1, processes=[{"pid": pids["step1"], "used_memory": GIB}])])
    proc, series = node.collect("--host-root", str(host.root))
    assert proc.returncode == 0, proc.stderr
    assert value(series, "gpu_process_active", gpu="0", pid=str(pids["step0"]), slurm_job="4711") == 0
    allocated = [dict(labels)["gpu"] for name, labels in series if name == "gpu_slurm_allocation_info"]
    assert allocated == ["1"]


def test_idle_gpu_of_a_v1_job_from_its_devices_list(node, tmp_path):
    """A job that holds GPU 2 (minor 2) and runs nothing on it: devices.list names it; the user comes from
    the uid in the path; the account is nowhere to read."""
    host = SlurmHost(tmp_path / "host", V1)
    host.cgroup_job("5000", uid=1001, minors=(2,))
    node.write([h100(i) for i in range(4)])
    proc, series = node.collect("--host-root", str(host.root))
    assert proc.returncode == 0, proc.stderr
    assert value(series, "gpu_slurm_allocation_info", gpu="2", slurm_job="5000", slurm_user="bob", slurm_account="",
                 slurm_partition="", gpu_instance="") == 1
    assert [labels for name, labels in series if name == "gpu_slurm_allocation_info" and
            dict(labels)["gpu"] != "2"] == []  # nvidiactl (195:255), nvidia-modeset and other majors are no GPU


def test_sluid_job_end_to_end(node, tmp_path):
    host = SlurmHost(tmp_path / "host", V2)
    pid = host.process(SLUID, "0")
    host.stepd("8123", SLUID, "0")
    node.write([h100(0, processes=[{"pid": pid, "used_memory": GIB}])])
    proc, series = node.collect("--host-root", str(host.root))
    assert proc.returncode == 0, proc.stderr
    assert value(series, "gpu_process_memory_used_bytes", pid=str(pid), slurm_job="8123") == GIB
    assert value(series, "gpu_slurm_allocation_info", gpu="0", slurm_job="8123", slurm_user="alice") == 1


def mapping_directory(tmp_path):
    directory = tmp_path / "dcgm-job-map"
    directory.mkdir()
    (directory / "0").write_text("4711\n")
    (directory / "1").write_text("4711\nnot a job\n")  # a garbage line: skipped, said once
    (directory / "2.1").write_text("6000\n")  # MIG: GPU 2's GPU instance 1
    (directory / "3").write_text("999\n")  # stale: job 999 has ended, the epilog left its file
    (directory / "9").write_text("6000\n")  # no GPU 9 here
    (directory / "notes.txt").write_text("4711\n")  # not a mapping file
    (directory / "4").mkdir()  # not a file
    return directory


def test_mapping_directory(node, tmp_path):
    host = SlurmHost(tmp_path / "host", V2)
    host.cgroup_job("4711")
    host.cgroup_job("6000")
    directory = mapping_directory(tmp_path)
    node.write([h100(i) for i in range(4)])
    proc, series = node.collect("--host-root", str(host.root), "--hpc-job-mapping-dir", str(directory))
    assert proc.returncode == 0, proc.stderr
    allocated = sorted((dict(labels)["gpu"], dict(labels)["slurm_job"], dict(labels)["gpu_instance"])
                       for name, labels in series if name == "gpu_slurm_allocation_info")
    assert allocated == [("0", "4711", ""), ("1", "4711", ""), ("2", "6000", "1")]
    assert proc.stderr.count("not Slurm job IDs") == 1 and "'not a job'" in proc.stderr
    assert "3: 999" in proc.stderr and "GPU 9" in proc.stderr
    again = node.run("collect", "--out", "-", "--host-root", str(host.root), "--hpc-job-mapping-dir", str(directory))
    assert again.returncode == 0 and "not Slurm job IDs" not in again.stderr  # said once (per boot)
    assert allocations(parse_exposition(again.stdout)) == allocations(series)


def allocations(series) -> dict:
    return {key: v for key, v in series.items() if key[0] == "gpu_slurm_allocation_info"}


def test_mapping_directory_from_dcgm_exporter_s_variable_and_naming_dcgm(node, tmp_path):
    host = SlurmHost(tmp_path / "host", V2)
    host.cgroup_job("4711")
    host.cgroup_job("6000")
    directory = mapping_directory(tmp_path)
    (directory / "0").write_text("4711\n6000\n")  # two jobs share GPU 0
    node.write([h100(i, temperature=40 + i) for i in range(4)])
    env = {**node.env(), "DCGM_HPC_JOB_MAPPING_DIR": str(directory)}
    proc = subprocess.run([sys.executable, "-m", "gputext", "collect", "--out", "-", "--naming", "dcgm",
                           "--host-root", str(host.root), "--state-dir", str(node.state_dir)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    series = parse_exposition(proc.stdout)
    # dcgm-exporter copies each series of a mapped GPU per job, with hpc_job
    assert value(series, "DCGM_FI_DEV_GPU_TEMP", gpu="0", hpc_job="4711") == 40
    assert value(series, "DCGM_FI_DEV_GPU_TEMP", gpu="0", hpc_job="6000") == 40
    assert value(series, "DCGM_FI_DEV_GPU_TEMP", gpu="1", hpc_job="4711") == 41
    assert len([1 for name, labels in series if name == "DCGM_FI_DEV_GPU_TEMP"
                and dict(labels)["gpu"] == "3"]) == 1 and value(series, "DCGM_FI_DEV_GPU_TEMP", gpu="3") == 43
    assert "hpc_job" not in dict(next(labels for name, labels in series if name == "DCGM_FI_DEV_GPU_TEMP"
                                      and dict(labels)["gpu"] == "3"))


def test_root_without_capabilities_names_the_job_but_not_its_account(node, tmp_path):
    """The systemd units run gputext as root without CAP_SYS_PTRACE (nor CAP_DAC_OVERRIDE): another
    user's environ is unreadable, so the account and partition are left out and doctor says why."""
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed"
    host = SlurmHost(tmp_path / "host", V2)
    pids = two_step_job(host)
    for pid in pids.values():
        environ = host.root / "proc" / str(pid) / "environ"
        os.chown(environ, 1000, 1000)
        environ.chmod(0o400)  # as /proc/<pid>/environ looks to root without CAP_SYS_PTRACE or DAC override
    node.write(gpus(pids))
    no_capabilities = [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--"] if os.geteuid() == 0 else []
    proc = subprocess.run([*no_capabilities, sys.executable, "-m", "gputext", "collect", "--out", "-",
                           "--host-root", str(host.root), "--state-dir", str(node.state_dir)],
                          env=node.env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    series = parse_exposition(proc.stdout)
    assert value(series, "gpu_slurm_allocation_info", gpu="0", slurm_job="4711", slurm_user="alice", slurm_account="",
                 slurm_partition="") == 1
    doctor = subprocess.run([*no_capabilities, sys.executable, "-m", "gputext", "doctor", "--host-root",
                             str(host.root), "--state-dir", str(tmp_path / "doctor-state")],
                            env=node.env(), capture_output=True, text=True, timeout=60)
    line = next(line for line in doctor.stdout.splitlines() if line.split()[1:2] == ["slurm:"])
    assert "job 4711" in line and "CAP_SYS_PTRACE" in line, doctor.stdout


def test_doctor_says_how_jobs_were_found(node, tmp_path):
    host = SlurmHost(tmp_path / "host", V2)
    pids = two_step_job(host)
    host.cgroup_job("4711")
    node.write(gpus(pids))
    doctor = node.run("doctor", "--host-root", str(host.root), "--state-dir", str(tmp_path / "doctor-state"))
    line = next(line for line in doctor.stdout.splitlines() if line.split()[1:2] == ["slurm:"])
    assert line.startswith("ok") and "1 job (4711) on GPU 0, 1" in line and "process cgroups" in line, line
    assert "no --hpc-job-mapping-dir" in line


def test_doctor_on_a_node_without_slurm(node, tmp_path):
    node.write([h100(0)])
    doctor = node.run("doctor", "--host-root", str(tmp_path / "empty"), "--state-dir", str(tmp_path / "s"))
    line = next(line for line in doctor.stdout.splitlines() if line.split()[1:2] == ["slurm:"])
    assert line.startswith("info") and "no Slurm job" in line, line


@pytest.mark.parametrize("layout", [V1, V2])
def test_running_jobs_are_listed_from_the_cgroup_tree(tmp_path, layout):
    host = SlurmHost(tmp_path, layout)
    assert SlurmJobs(tmp_path).running() is None  # no Slurm cgroup tree: staleness cannot be told
    host.cgroup_job("4711")
    host.cgroup_job("4712", uid=1001)
    if layout == V2:
        host.stepd("8123", SLUID)  # a SLUID directory, named by its step's slurmstepd
    assert SlurmJobs(tmp_path).running() == ({"4711", "4712", "8123"} if layout == V2 else {"4711", "4712"})


def test_running_jobs_are_unknown_while_a_sluid_directory_has_no_readable_stepd(tmp_path):
    host = SlurmHost(tmp_path, V2)
    host.cgroup_job("4711")
    host.cgroup_job(SLUID)
    assert SlurmJobs(tmp_path).running() is None


def test_a_mapping_line_of_a_number_too_large_for_a_job_id_is_skipped(node, tmp_path):
    """Slurm's job ids are 32-bit: a line of 5,000 digits is no job id (doctor sorted job ids with int(),
    which such a line made raise)."""
    directory = tmp_path / "dcgm-job-map"
    directory.mkdir()
    (directory / "0").write_text("4711\n" + "9" * 5000 + "\n12345678901\n")
    node.write([h100(0)])
    proc, series = node.collect("--host-root", str(tmp_path / "host"), "--hpc-job-mapping-dir", str(directory))
    assert proc.returncode == 0, proc.stderr
    assert [dict(labels)["slurm_job"] for name, labels in series if name == "gpu_slurm_allocation_info"] == ["4711"]
    assert proc.stderr.count("2 line(s)") == 1 and "not Slurm job IDs" in proc.stderr, proc.stderr
    doctor = node.run("doctor", "--host-root", str(tmp_path / "host"), "--hpc-job-mapping-dir", str(directory),
                      "--state-dir", str(tmp_path / "doctor-state"))
    line = next(line for line in doctor.stdout.splitlines() if line.split()[1:2] == ["slurm:"])
    assert line.startswith("ok") and "1 job (4711) on GPU 0" in line and "2 lines" in line, line


def test_passwd_lines_that_name_no_uid_are_passed_over(tmp_path):
    """The host's /etc/passwd under --host-root may hold anything: a uid of digits that are not ASCII
    ('²'.isdigit() is true, int('²') fails) or of 5,000 digits made the user lookup raise."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("odd:x:\u00b2:0::/:/bin/sh\nlong:x:" + "7" * 5000 + ":0::/:/bin/sh\n"
                                         "big:x:4294967296:0::/:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/bash\n")
    jobs = SlurmJobs(tmp_path)
    assert jobs.user_name(1000) == "alice" and jobs.user_name(2) == "" and jobs.user_name(4294967296) == ""

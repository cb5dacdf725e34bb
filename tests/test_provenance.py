from gradsim_utils import provenance


def test_git_commit_of_this_checkout_and_outside_one(tmp_path):
    here = provenance.git_commit()
    assert here["sha"] == "unknown" or (len(here["sha"]) == 40 and here["short"] == here["sha"][:10])
    assert provenance.git_commit(tmp_path) == {"sha": "unknown", "short": "unknown", "dirty": False}


def test_package_versions_and_machine():
    versions = provenance.package_versions(("torch", "surely-not-a-package-xyz"))
    assert versions["torch"][0].isdigit() and versions["surely-not-a-package-xyz"] == "not installed"
    machine = provenance.machine_description()
    assert machine["logical CPUs"] >= 1 and machine["memory (GiB)"] > 0

"""Package layout: the design card fixes agents/, streams/ and schemas/ at the
root; they install as sub-packages of one `svctrace` namespace so nothing
generic ("schemas", "agents") lands at the top level of site-packages."""
from setuptools import find_namespace_packages, setup

ROOTS = {
    "svctrace": "svctrace",
    "svctrace.agents": "agents",
    "svctrace.streams": "streams",
    "svctrace.schemas": "schemas",
}

packages, package_dir = [], {}
for package, folder in ROOTS.items():
    package_dir[package] = folder
    packages.append(package)
    # Namespace discovery also picks up data folders (agents/bpf, schemas/examples/*),
    # so their files ship in the wheel as package data.
    subs = find_namespace_packages(folder, exclude=["*__pycache__*", "*.egg-info*"])
    packages += [f"{package}.{sub}" for sub in subs]

setup(packages=packages, package_dir=package_dir)

"""What every test shares: no writes outside temporary folders, and the shared fixtures.

- The decoded-image cache (``ipskit.data``, ``$IPSKIT_CACHE_DIR``) goes to a session temporary
  folder, never to the user's ``~/.cache/ipskit``.
- ``cached_datasets``: each dataset is loaded once per session (``train_helpers``), for test
  files that train many tiny runs; use it with ``pytestmark = pytest.mark.usefixtures(...)``
  or as an argument.

Plain helper functions shared by several files stay in ``train_helpers.py`` (tiny settings,
the dataset cache) and ``_app_runs.py`` (a folder of tiny trained runs for the app tests).
"""

import pytest
from train_helpers import cache_datasets


@pytest.fixture(autouse=True, scope="session")
def _private_image_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("IPSKIT_CACHE_DIR", str(tmp_path_factory.mktemp("ipskit-cache")))
    yield
    mp.undo()


@pytest.fixture
def cached_datasets(monkeypatch):
    """``ipskit.data.load_dataset`` answered from a per-session cache of bundles."""
    cache_datasets(monkeypatch)

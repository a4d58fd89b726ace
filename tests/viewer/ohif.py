"""OHIF Viewer v3 in headless Chromium against Orthanc's DICOMweb, in a private namespace.

The machinery of ``tests/viewer``:

- :func:`fetch_ohif` gets the prebuilt viewer with ``npm pack @ohif/app@3.13.2``
  into a cache folder outside the repository and unpacks it once;
- :func:`dicomweb_orthanc` is :class:`tests.peers.Orthanc` with the Debian
  DICOMweb plugin enabled at ``/dicom-web/`` (WADO-URI at ``/wado``);
- :class:`ViewerServer` serves ``dist/`` and our ``app-config.js`` and
  reverse-proxies ``/dicom-web`` and ``/wado`` to Orthanc, from one origin on
  127.0.0.1 inside the namespace (``_server.py`` in a subprocess);
- :func:`browse_seg` runs ``_browse.py`` (Playwright with the system Chromium)
  inside the namespace and returns what it saw.

See ``/work/shared/reference/viewer_test_notes.md`` for the facts behind it.
Every ``*_unavailable`` function returns ``None`` or a reason for ``pytest.skip``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from tests.peers import NetNamespace, Orthanc, stop_process

__all__ = [
    "CHROMIUM",
    "DICOMWEB_PLUGIN",
    "OHIF_PACKAGE",
    "OhifUnavailable",
    "ViewerServer",
    "browse_seg",
    "chromium_unavailable",
    "default_cache_dir",
    "dicomweb_orthanc",
    "dicomweb_unavailable",
    "fetch_ohif",
    "write_app_config",
]

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OHIF_PACKAGE = "@ohif/app@3.13.2"
CHROMIUM = "/usr/bin/chromium"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

APP_CONFIG = """\
/* segnode viewer test: one origin, DICOMweb through the local proxy. */
window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  disableConfirmationPrompts: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'segnode test Orthanc',
        name: 'orthanc',
        wadoUriRoot: window.location.origin + '/wado',
        qidoRoot: window.location.origin + '/dicom-web',
        wadoRoot: window.location.origin + '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        dicomUploadEnabled: false,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
"""


class OhifUnavailable(RuntimeError):
    """The OHIF package could not be fetched or unpacked (no registry, no npm)."""


def default_cache_dir() -> Path:
    """``~/.cache/segnode-test/ohif``: outside the repository, reused between runs."""
    return Path.home() / ".cache" / "segnode-test" / "ohif"


def fetch_ohif(cache_dir: Path | None = None, *, timeout_s: float = 300.0) -> Path:
    """Return OHIF's ``dist/`` folder, running ``npm pack`` and unpacking on first use.

    Parameters
    ----------
    cache_dir : pathlib.Path, optional
        Cache folder; :func:`default_cache_dir` when omitted.
    timeout_s : float
        Seconds allowed for ``npm pack``.

    Returns
    -------
    pathlib.Path
        ``<cache>/<version>/package/dist`` holding ``index.html``.

    Raises
    ------
    OhifUnavailable
        If npm is missing or ``npm pack`` fails (no registry).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    version = OHIF_PACKAGE.rsplit("@", 1)[1]
    unpacked = cache / version
    dist = unpacked / "package" / "dist"
    if (dist / "index.html").is_file():
        return dist
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"ohif-app-{version}.tgz"
    if not tarball.is_file():
        _npm_pack(cache, timeout_s)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        try:
            with tarfile.open(tarball) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError) as exc:
            tarball.unlink(missing_ok=True)
            raise OhifUnavailable(f"cannot unpack {tarball}: {exc}") from exc
        if not (Path(tmp) / "package" / "dist" / "index.html").is_file():
            raise OhifUnavailable(f"{tarball} has no package/dist/index.html")
        shutil.rmtree(unpacked, ignore_errors=True)
        try:
            os.replace(tmp, unpacked)
        except OSError:
            if not (dist / "index.html").is_file():  # not a concurrent run's unpacking
                raise
        else:
            Path(tmp).mkdir()  # let TemporaryDirectory clean up an empty folder
    return dist


def _npm_pack(cache: Path, timeout_s: float) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise OhifUnavailable("npm not found: cannot fetch OHIF (apt-get install npm)")
    try:
        proc = subprocess.run(
            [npm, "pack", OHIF_PACKAGE, "--loglevel=error"], cwd=cache, capture_output=True,
            text=True, timeout=timeout_s, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise OhifUnavailable(f"npm pack {OHIF_PACKAGE} timed out after {timeout_s} s") from exc
    if proc.returncode != 0:
        raise OhifUnavailable(
            f"npm pack {OHIF_PACKAGE} failed (rc={proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-500:]}"
        )


def chromium_unavailable() -> str | None:
    """``None`` when Chromium and the Playwright package are usable, else why not."""
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} not found (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python package playwright not installed"
    return None


def dicomweb_unavailable() -> str | None:
    """``None`` when Orthanc's DICOMweb plugin is installed, else why not."""
    if not DICOMWEB_PLUGIN.is_file():
        return f"{DICOMWEB_PLUGIN} not found (apt-get install orthanc-dicomweb)"
    return None


def dicomweb_orthanc(folder: Path, netns: NetNamespace) -> Orthanc:
    """An :class:`Orthanc` (not started) with DICOMweb at ``/dicom-web/`` and ``/wado``."""
    return Orthanc(folder, netns=netns, extra_config={
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                     "WadoRoot": "/wado", "Ssl": False},
    })


def write_app_config(path: Path) -> Path:
    """Write the viewer's ``app-config.js`` (data source on the page's own origin)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(APP_CONFIG)
    return path


class ViewerServer:
    """``_server.py`` on 127.0.0.1 inside ``netns``: OHIF's files and the Orthanc proxy.

    Parameters
    ----------
    netns : NetNamespace
        The namespace that also runs Orthanc and Chromium.
    dist : pathlib.Path
        OHIF's ``dist/`` folder (served read-only).
    app_config : pathlib.Path
        The ``app-config.js`` served in place of the packaged one.
    upstream : str
        Orthanc's base URL inside the namespace.
    log_path : pathlib.Path
        Request log of the server.
    """

    def __init__(self, netns: NetNamespace, dist: Path, app_config: Path, upstream: str,
                 log_path: Path) -> None:
        self.netns = netns
        self.port = netns.free_port()
        self.log_path = Path(log_path)
        self._argv = [sys.executable, str(HERE / "_server.py"), "--port", str(self.port),
                      "--dist", str(dist), "--app-config", str(app_config),
                      "--upstream", upstream]
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Origin of the viewer, valid inside the namespace."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ViewerServer:
        """Start the server and wait until its port listens."""
        with self.log_path.open("ab") as log:
            self._proc = self.netns.popen(self._argv, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT)
        try:
            self.netns.wait_listening([self.port], timeout=timeout, process=self._proc)
        except (RuntimeError, TimeoutError):
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server by PID."""
        proc, self._proc = self._proc, None
        stop_process(proc)

    def __enter__(self) -> ViewerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def browse_seg(netns: NetNamespace, job: dict[str, Any], work: Path,
               *, timeout_s: float = 150.0) -> dict[str, Any]:
    """Run ``_browse.py`` for one SEG inside ``netns``; return its result record.

    Parameters
    ----------
    netns : NetNamespace
        Namespace holding the viewer server and Orthanc.
    job : dict
        ``base``, ``study_uid``, ``seg_series_uid``, ``slice_count``, ``name``,
        ``out_dir`` and ``timeout_s`` (see ``_browse.py``).
    work : pathlib.Path
        Folder for the job and result files and the driver's log.
    timeout_s : float
        Seconds before the driver is killed.

    Returns
    -------
    dict
        The driver's result, plus ``returncode`` and ``log`` (its stderr tail).
    """
    work.mkdir(parents=True, exist_ok=True)
    job_path, result_path = work / f"{job['name']}-job.json", work / f"{job['name']}-result.json"
    job_path.write_text(json.dumps(job, indent=2))
    result_path.unlink(missing_ok=True)
    proc = netns.run([sys.executable, str(HERE / "_browse.py"), str(job_path), str(result_path)],
                     capture_output=True, text=True, timeout=timeout_s, cwd=REPO)
    result: dict[str, Any] = (json.loads(result_path.read_text()) if result_path.is_file()
                              else {"error": "driver wrote no result"})
    result["returncode"] = proc.returncode
    result["log"] = (proc.stdout + proc.stderr)[-3000:]
    return result

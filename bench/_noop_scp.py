"""A pynetdicom Storage SCP that stores nothing: the ceiling of pynetdicom itself.

It answers every C-STORE with Success after taking the encoded data set (as
segnode's listener does) and appends the SOP Instance UID to a file (one
short write per instance), so the benchmark can check every instance
arrived. Run by ``bench/receive.py``:
``python bench/_noop_scp.py AET HOST PORT UID_FILE``.
"""

from __future__ import annotations

import sys

from pynetdicom import AE, AllStoragePresentationContexts, evt


def main() -> None:
    """Serve until killed."""
    aet, host, port, uid_file = sys.argv[1:5]
    ae = AE(ae_title=aet)
    ae.supported_contexts = AllStoragePresentationContexts
    with open(uid_file, "a", buffering=1) as uids:
        def on_store(event: evt.Event) -> int:
            event.encoded_dataset()
            uids.write(f"{event.request.AffectedSOPInstanceUID}\n")
            return 0x0000

        ae.start_server((host, int(port)), evt_handlers=[(evt.EVT_C_STORE, on_store)],
                        block=True)


if __name__ == "__main__":
    main()

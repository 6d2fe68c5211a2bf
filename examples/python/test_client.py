"""Tests of wharf_client against a real server.

    WHARF_URL=http://127.0.0.1:8080 WHARF_KEY=wharf_... [WHARF_PROFILE=docker] python3 -m unittest test_client

The Rust system test `python_client_passes_its_tests` starts the server and runs this.
"""

import hashlib
import os
import unittest

from wharf_client import Wharf, WharfError


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.wharf = Wharf(os.environ["WHARF_URL"], os.environ["WHARF_KEY"])
        cls.profile = os.environ.get("WHARF_PROFILE", "local")

    def test_lifecycle_exec_and_files(self):
        key = f"py-{self.profile}-{os.getpid()}"
        sbx = self.wharf.create_sandbox(self.profile, idempotency_key=key)
        self.assertEqual(sbx.status, "running")
        self.assertEqual(self.wharf.create_sandbox(self.profile, idempotency_key=key).id, sbx.id)
        other = "docker" if self.profile == "local" else "local"
        with self.assertRaises(WharfError) as conflict:
            self.wharf.create_sandbox(other, idempotency_key=key)
        self.assertEqual(conflict.exception.code, "idempotency_conflict")
        self.assertIn(sbx.id, [s.id for s in self.wharf.list_sandboxes(status="running")])

        result = sbx.exec(["python3", "-c", "import sys; print(sum(int(x) for x in sys.stdin.read().split()))"], stdin="1 2 3 4")
        self.assertEqual((result.exit_code, result.stdout), (0, "10\n"))
        result = sbx.exec("echo $WHO; exit 7", env={"WHO": "py"})
        self.assertEqual((result.exit_code, result.stdout), (7, "py\n"))
        result = sbx.exec(["sleep", "10"], timeout_ms=500)
        self.assertTrue(result.timed_out)

        payload = os.urandom(1024 * 1024)
        sbx.mkdir("data/nested")
        sbx.write_file("data/nested/blob.bin", payload)
        self.assertEqual(hashlib.sha256(sbx.read_file("data/nested/blob.bin")).hexdigest(), hashlib.sha256(payload).hexdigest())
        self.assertEqual([e["name"] for e in sbx.list_dir("data/nested")], ["blob.bin"])
        self.assertIn("data", [e["name"] for e in sbx.list_dir()])
        sbx.remove("data", recursive=True)
        with self.assertRaises(WharfError) as missing:
            sbx.read_file("data/nested/blob.bin")
        self.assertEqual((missing.exception.status, missing.exception.code), (404, "file_not_found"))
        with self.assertRaises(WharfError) as escape:
            sbx.read_file("../../etc/passwd")
        self.assertEqual(escape.exception.code, "invalid_path")

        self.assertEqual(sbx.stop().status, "stopped")
        self.assertEqual(sbx.start().status, "running")
        kinds = [e["kind"] for e in sbx.events()]
        for kind in ("created", "started", "exec", "stopped"):
            self.assertIn(kind, kinds)
        sbx.delete()
        with self.assertRaises(WharfError) as gone:
            self.wharf.sandbox(sbx.id)
        self.assertEqual(gone.exception.code, "not_found")


if __name__ == "__main__":
    unittest.main()

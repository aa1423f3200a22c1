"""VM test tier: build Debian images, boot them under qemu (TCG), run callerid's tests inside."""

from __future__ import annotations

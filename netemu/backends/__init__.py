"""The emulator's backends, one module each, all with the `netemu.link.Link` interface: `user`
(`LinkEmulator`, a user-space relay, no privileges), `kernel` (`KernelLink`, htb between two
network namespaces, root only) and `tun` (`TunLink`, packets forwarded between two namespaces in
user space, with loss, root only). `netemu.link.open_link` picks one by name.
"""

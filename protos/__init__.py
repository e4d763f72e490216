"""The wire contract between edge and server: the .proto stubs, the tensor codec, the bundle
manifest and the shared error hierarchy. Torch-free; imports none of splitinfer's other packages."""

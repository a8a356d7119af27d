"""Reading Go executables: ELF, pclntab, build info, symbolization."""

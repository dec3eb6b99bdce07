/* tests/nompi/mpi.h: first on the include path of the build's no-MPI check (Makefile.am, NOMPI_FILES).
   A file below the exchange that reaches mpi.h stops the build here. */
#error "mpi.h reached from a file that must stay below the exchange (no MPI there: see Makefile.am NOMPI_FILES)"

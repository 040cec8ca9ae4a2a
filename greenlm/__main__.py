from greenlm.cli import main

main()

from ufkit.cli import main

main()

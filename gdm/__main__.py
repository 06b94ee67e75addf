from gdm.cli import main

main()

from deltaforge.cli import main

main()

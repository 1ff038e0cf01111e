from .complexity import main

main()

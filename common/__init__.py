"""What every stage shares and no stage owns: atomic writes, output locks and input guards
(fsutil), and the one-line click command class (cliutil). Standard library and click only, so a
runtime-only install imports it without torch."""

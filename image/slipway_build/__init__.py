"""The Slipway build program: turns an app's source archive into a slug (see image/README.md).

:mod:`.select` decides what the app is and which runtime it gets (pure); :mod:`.cli` reads
the command line (pure); :mod:`.build` runs the installers and the Procfile's ``build:``
command and writes the slug. Python 3.9 and the standard library only.
"""

"""The notebook layer: IPython magics, the ipywidgets browser, progress bars. Imports IPython; nothing below it does."""
